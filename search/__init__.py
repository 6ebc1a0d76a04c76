"""Everything that reads an index: queries, filters, word neighbourhoods, the demo."""

from latent.indexer.filters import parse_where
from .query import Hit, Results, search, search_batch, search_vectors, similar
from .words import neighbours

__all__ = ["Hit", "Results", "search", "search_batch", "search_vectors", "similar", "neighbours", "parse_where"]
