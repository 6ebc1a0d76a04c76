"""Keyword and hybrid search: BM25 over the store's FTS5 keyword index, and reciprocal rank
fusion of the keyword and the vector rankings. `search_by_mode` is the one entry point of the
three modes (vector, keyword, hybrid) for the Python API, the CLI and the HTTP API."""

from __future__ import annotations

import numpy as np

from latent.indexer.errors import InputError, KeywordQueryError
from latent.indexer.index import Index

from .query import Hit, encode_query, search as vector_search, search_vectors

MODES = ("vector", "keyword", "hybrid")
SYNTAXES = ("words", "fts5")  # words: plain words, each matched as written; fts5: SQLite's FTS5 query syntax
# Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): an item's fused score is
# the sum over the rankings that hold it of 1 / (RRF_K + rank), rank 1-based. 60 is the paper's
# constant: it damps the weight of the very first ranks, so that agreement between the two
# rankings counts more than one ranking's top place.
RRF_K = 60
# Each side contributes its best max(k, HYBRID_DEPTH) items to the fusion.
HYBRID_DEPTH = 100


def match_expression(text: str, syntax: str = "words") -> str:
    """The FTS5 MATCH expression of a query. `words`: each whitespace-separated chunk with a
    letter or digit becomes a quoted phrase (quotes doubled), joined by OR, so nothing the user
    typed is read as FTS5 syntax (`read_csv` and `GPL-3.0` match as written, up to case and
    accents); BM25 ranks the items holding more and rarer words first. `fts5`: the text as FTS5
    query syntax (AND, OR, NOT, "phrases", prefix*, NEAR(...)). Either way the expression
    reaches SQLite as a bound parameter."""
    if syntax not in SYNTAXES:
        raise InputError(f"unknown keyword query syntax {syntax!r}; choose one of: {', '.join(SYNTAXES)}")
    if not isinstance(text, str) or not text.strip():
        raise InputError("the query is empty; give words to search for")
    if syntax == "fts5":
        return text
    chunks = [c for c in text.split() if any(ch.isalnum() for ch in c)]
    if not chunks:
        raise KeywordQueryError(f"the query {text!r} has no letters or digits to search for")
    return " OR ".join('"' + c.replace('"', '""') + '"' for c in chunks)


def keyword_search(index: Index, text: str, *, k: int = 10, where: str | None = None,
                   syntax: str = "words") -> list[Hit]:
    """The k items whose texts best match `text` by BM25 (the score: higher is better)."""
    match = match_expression(text, syntax)
    with index.snapshot():
        generation = index.generation()
        ids, scores = index.keyword_ids(match, k, where)
        hits = _hits(index, generation, ids, scores)
    if not hits:
        _explain_no_texts(index)
    return hits


def hybrid_search(index: Index, text: str, *, k: int = 10, where: str | None = None,
                  syntax: str = "words") -> list[Hit]:
    """The k best items by reciprocal rank fusion of the vector ranking and the keyword ranking
    (each its best max(k, HYBRID_DEPTH) items). The score is the fused one, sum of 1 / (60 + rank)."""
    match = match_expression(text, syntax)
    vector = encode_query(index, text)
    depth = max(k, HYBRID_DEPTH)
    with index.snapshot(vectors=True):  # both rankings and the rows of the hits: one generation
        generation = index.generation()
        by_vector = search_vectors(index, vector, k=depth, where=where)[0]
        keyword_ids, _ = index.keyword_ids(match, depth, where)
        if not len(keyword_ids) and not by_vector:
            return []
        if not len(keyword_ids):
            _explain_no_texts(index)
        fused = fuse([[h.id for h in by_vector], keyword_ids.tolist()])[:k]
        ids = np.array([i for i, _ in fused], dtype=np.int64)
        return _hits(index, generation, ids, np.array([s for _, s in fused]))


def fuse(rankings: list[list[int]], *, constant: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of rankings of ids (best first): (id, fused score), best first;
    ties go to the item ranked best by any one ranking, then to the earlier ranking's order."""
    scores: dict[int, float] = {}
    best: dict[int, tuple[int, int]] = {}
    for which, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (constant + rank)
            best[item] = min(best.get(item, (rank, which)), (rank, which))
    return sorted(scores.items(), key=lambda pair: (-pair[1], best[pair[0]]))


def search_by_mode(index: Index, query: str | np.ndarray, *, mode: str = "vector", k: int = 10,
                   where: str | None = None, syntax: str = "words") -> list[Hit]:
    """Search in one of MODES: vector (nearest neighbours of the encoded query, or of a vector),
    keyword (BM25 over the texts) or hybrid (the two fused)."""
    if mode not in MODES:
        raise InputError(f"unknown search mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode == "vector":
        return vector_search(index, query, k=k, where=where)
    if not isinstance(query, str):
        raise InputError(f"{mode} search needs a text query, not a vector; use mode vector for vectors")
    search = keyword_search if mode == "keyword" else hybrid_search
    return search(index, query, k=k, where=where, syntax=syntax)


def _hits(index: Index, generation: int, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
    rows = index.rows(ids.tolist(), generation)
    hits = []
    for item_id, score in zip(ids.tolist(), scores.tolist()):
        row = rows.get(item_id)
        if row is not None:
            hits.append(Hit(len(hits) + 1, row[0], score, row[4], row[2], item_id, row[1]))
    return hits


def _explain_no_texts(index: Index) -> None:
    """Raise KeywordQueryError when the index has items but none with a text keyword search reads."""
    if index.has_keyword_texts():
        return
    kinds = index.kind_counts()
    if not kinds:
        return
    if "word" in kinds:
        raise KeywordQueryError(
            f"{index.directory.name} holds single words ({index.encoder_name}), which are not keyword-indexed: a "
            "word is found by its key (`latent similar DIR --key WORD`); search it with mode vector")
    raise KeywordQueryError(
        f"{index.directory.name} has no texts to match keywords against (its items: "
        f"{', '.join(f'{n:,} {kind}' for kind, n in kinds.items())}; images have no text): search it with "
        "mode vector, and filter on metadata with where")


__all__ = ["MODES", "SYNTAXES", "RRF_K", "HYBRID_DEPTH", "match_expression", "keyword_search", "hybrid_search",
           "fuse", "search_by_mode"]
