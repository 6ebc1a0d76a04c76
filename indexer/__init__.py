"""Everything that writes an index: encoders, readers, the store, the vector index, ingestion."""

from .encoders import Encoder, get_encoder, list_encoders
from .errors import (EncoderMismatch, EncoderUnavailable, FilterError, IndexCorrupt, IndexExists, IndexNotFound,
                     InputError, LatentError, LockTimeout, OutOfVocabulary)
from .index import Index, IngestReport
from .readers import read_inputs, records_from_texts
from .records import Record, Skip

__all__ = [
    "Index", "IngestReport", "Record", "Skip", "read_inputs", "records_from_texts",
    "Encoder", "get_encoder", "list_encoders",
    "LatentError", "IndexNotFound", "IndexExists", "EncoderMismatch", "EncoderUnavailable", "OutOfVocabulary",
    "LockTimeout", "FilterError", "InputError", "IndexCorrupt",
]
