"""latent: vector similarity search over latent spaces.

The object API::

    import latent
    ix = latent.create("notes", encoder="minilm")   # latent.open("notes") for an existing one
    ix.add(["first text", "second text"])
    hits = ix.search("query", k=10, where="year >= 2000")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from .indexer.encoders import Encoder, get_encoder, list_encoders, register as register_encoder
from .indexer.errors import (DISTRIBUTION, EncoderMismatch, EncoderUnavailable, FilterError, IndexCorrupt, IndexExists,
                             IndexNotFound, InputError, KeyNotFound, KeywordQueryError, LatentError, LockTimeout,
                             MissingExtra, OutOfVocabulary, StorageError)
from .indexer.index import IngestReport
from .indexer.readers import read_inputs
from .indexer.records import Record, Skip
from .search.collection import Collection, analogy, create, interpolate, open
from .search.clusters import Cluster, Clustering
from .search.dupes import DuplicateGroup
from .search.explore import Step
from .search.query import Hit

try:
    __version__ = _version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "create", "open", "analogy", "interpolate", "Collection", "Hit", "Step", "DuplicateGroup", "Cluster",
    "Clustering", "IngestReport", "Record", "Skip", "read_inputs", "Encoder", "get_encoder", "list_encoders", "register_encoder",
    "LatentError", "KeyNotFound", "IndexNotFound", "IndexExists", "EncoderMismatch", "EncoderUnavailable",
    "OutOfVocabulary", "LockTimeout", "FilterError", "KeywordQueryError", "InputError", "IndexCorrupt", "StorageError",
    "MissingExtra",
]
