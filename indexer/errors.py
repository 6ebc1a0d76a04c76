"""Typed errors of latent. Every message says what went wrong and what to do next;
the CLI prints it as one line and exits 1."""

from importlib import import_module


class LatentError(Exception):
    """Base class of every error latent raises on purpose."""


class IndexNotFound(LatentError):
    """The directory holds no latent index."""


class IndexExists(LatentError):
    """`create` was asked for a directory that already holds an index."""


class EncoderMismatch(LatentError):
    """A query, vector or addition does not fit the index's encoder or dimension."""


class EncoderUnavailable(LatentError):
    """An encoder cannot be loaded (unknown name, missing weights, no network)."""


class OutOfVocabulary(LatentError):
    """A word encoder was given words it does not know."""

    def __init__(self, words, encoder="glove"):
        self.words = list(words)
        shown = ", ".join(repr(w) for w in self.words[:5])
        more = f" and {len(self.words) - 5} more" if len(self.words) > 5 else ""
        super().__init__(
            f"not in the {encoder} vocabulary: {shown}{more} "
            "(words are matched lower-cased; try a more common spelling)"
        )


class LockTimeout(LatentError):
    """Another process holds the index's write lock for too long."""


class KeyNotFound(LatentError):
    """No item has the key asked for."""


class FilterError(LatentError):
    """A filter (`where`) expression cannot be parsed."""


class KeywordQueryError(LatentError):
    """A keyword search cannot run: its FTS5 query cannot be parsed, or the index has no keyword index or no texts."""


class InputError(LatentError):
    """An input file or argument cannot be read at all."""


class IndexCorrupt(LatentError):
    """The vector index file cannot be used; the store can rebuild it."""


class StorageError(LatentError):
    """Writing the index to disk failed (disk full, I/O error); what was committed is kept."""


class ReadOnlyIndex(LatentError):
    """A write to an index this process may only read (a read-only mount, no write permission)."""


class MissingExtra(LatentError):
    """An optional part of latent needs a package that is not installed."""


DISTRIBUTION = "latent-search"


def require(module: str, extra: str, feature: str):
    """Import an optional library, or raise MissingExtra naming the extra that installs it:
    `plt = require("matplotlib.pyplot", "viz", "drawing maps")`."""
    try:
        return import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or module
        raise MissingExtra(f"{feature} needs {missing.split('.')[0]}, which is not installed: "
                           f"pip install '{DISTRIBUTION}[{extra}]'") from None
