"""Nearest-neighbour queries: a text, a key or a vector in, ranked Hits out.

Metadata filters are applied before the k nearest are chosen (FAISS id selectors,
or an exact scan of the matching items), so k hits come back whenever k items match.
Indexes with compressed codes (PQ) are re-ranked from the stored exact vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latent.indexer.encoders import normalize
from latent.indexer.errors import InputError, KeyNotFound, LatentError
from latent.indexer.images import load_image, read_query_image
from latent.indexer.index import Index
from latent.indexer.store import SnapshotMoved
from latent.indexer.vector_index import VectorIndex, exact_topk


# Filters matching at most this many items are answered by an exact scan of their stored
# vectors: exact, and cheaper than a graph or inverted-list search over a sparse selector.
EXACT_SCAN_MAX = 20_000
MAX_K = 100_000  # a larger k is refused; a k above the item count returns every item


@dataclass(slots=True)
class Hit:
    """One result: rank (1-based), key, score (cosine similarity), metadata, text, kind; `folded`:
    the keys of near-identical hits folded into this one (search with collapse)."""

    rank: int
    key: str
    score: float
    metadata: dict = field(default_factory=dict)
    text: str | None = None
    id: int = 0
    kind: str = "text"
    folded: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def encode_query(index: Index, text: str) -> np.ndarray:
    """The query vector of a text, by the index's own encoder."""
    if not isinstance(text, str) or not text.strip():
        raise LatentError("the query is empty; give a text to search for")
    return index.encoder.encode([text])[0]


def search(index: Index, query: str | np.ndarray, *, k: int = 10, where: str | None = None,
           exclude_keys: tuple[str, ...] = ()) -> list[Hit]:
    """The k nearest items to a text (encoded by the index's encoder) or a vector."""
    vector = encode_query(index, query) if isinstance(query, str) else query
    return search_vectors(index, vector, k=k, where=where, exclude_keys=exclude_keys)[0]


def similar(index: Index, *, key: str | None = None, vector: np.ndarray | None = None,
            image: str | Path | None = None, k: int = 10, where: str | None = None,
            include_self: bool = False) -> list[Hit]:
    """The k nearest items to a stored item, a vector, or an image file. The item itself (the
    key, or the stored images with the same content as the file) is left out unless `include_self`."""
    if sum(x is not None for x in (key, vector, image)) != 1:
        raise LatentError("give exactly one of a key, a vector or an image")
    exclude: tuple[str, ...] = ()
    if key is not None:
        vector = index.vector_of(key)
        if vector is None:
            raise KeyNotFound(f"no item with key {key!r} in {index.directory}")
        exclude = (key,)
    elif image is not None:
        picture, sha256 = read_query_image(image)  # one read: the pixels, and the content hash
        vector = _encode_picture(index, picture)
        exclude = tuple(index.keys_with_content([sha256]).values())
    return search_vectors(index, vector, k=k, where=where, exclude_keys=() if include_self else exclude)[0]


def encode_image(index: Index, path: str | Path) -> np.ndarray:
    """The query vector of an image file, by the index's own encoder."""
    return _encode_picture(index, load_image(path))


def _encode_picture(index: Index, picture) -> np.ndarray:
    return index.encoder.encode_images([picture])[0][0]


def search_vectors(index: Index, vectors: np.ndarray, *, k: int = 10, where: str | None = None,
                   exclude_keys: tuple[str, ...] = ()) -> list[list[Hit]]:
    """Hits for each query vector (normalised here)."""
    return _search(index, vectors, k, where, exclude_keys, _to_hits)


def search_batch(index: Index, vectors: np.ndarray, *, k: int = 10, where: str | None = None) -> "Results":
    """The k nearest items of each query vector, in columns (see Results): the batch path, which
    makes no Python object per hit unless asked (Results.hits() makes the Hits)."""
    return _search(index, vectors, k, where, (), Results)


def _search(index: Index, vectors: np.ndarray, k: int, where: str | None, exclude_keys: tuple[str, ...], answer):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be a whole number from 1 to {MAX_K:,}, got {k!r}")
    queries = normalize(index.check_vectors(vectors))
    if len(queries) and not queries.any(axis=1).all():
        raise InputError("the query vector is all zeros: it has no direction to search by")
    try:
        with index.snapshot(vectors=True, lazy=True):  # no statement when nothing changed and memory has the rows
            return _search_in_snapshot(index, queries, k, where, exclude_keys, answer)
    except SnapshotMoved:  # a write committed between the check and the first statement: read the generation
        with index.snapshot(vectors=True):
            return _search_in_snapshot(index, queries, k, where, exclude_keys, answer)


def _search_in_snapshot(index: Index, queries: np.ndarray, k: int, where: str | None, exclude_keys: tuple[str, ...],
                        answer):
    """One generation: the filter, the vector search and the rows of its hits."""
    vindex = index.vectors  # the snapshot's
    allowed = index.matching_ids(where, vindex.generation)
    if exclude_keys:
        found = index.lookup(list(exclude_keys))
        excluded = {v[0] for v in found.values()}
        if allowed is not None:
            allowed = np.setdiff1d(allowed, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
    else:
        excluded = set()
    want = k + len(excluded) if allowed is None else k
    scores, ids = _nearest(index, vindex, queries, want, allowed)
    return answer(index, vindex.generation, scores, ids, k, excluded)


def _nearest(index: Index, vindex: VectorIndex, queries: np.ndarray, k: int,
             allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, max(vindex.ntotal, 1))  # a k beyond the item count asks for every item
    if allowed is not None and len(allowed) <= EXACT_SCAN_MAX and not vindex.exact:
        return _exact_scan(index, vindex, queries, allowed, k)
    candidates = k * int(vindex.params.get("rerank", 10)) if vindex.lossy else k
    scores, ids = vindex.search(queries, k, allowed=allowed, candidates=candidates)
    if vindex.lossy:
        scores, ids = index.rerank(queries, ids, k)
    if allowed is not None:
        need = min(k, len(allowed))
        short = (ids >= 0).sum(axis=1) < need
        if short.any():  # the approximate search missed matches: fall back to an exact scan
            s2, i2 = _exact_scan(index, vindex, queries[short], allowed, k)
            scores[short], ids[short] = s2, i2
    elif not vindex.exact:
        short = (ids >= 0).sum(axis=1) < min(k, vindex.live)
        if short.any():  # a graph or probe search came back short (HNSW tombstones take its slots)
            if vindex.live <= EXACT_SCAN_MAX:
                s2, i2 = _exact_scan(index, vindex, queries[short], vindex.ids(), k)
            else:
                s2, i2 = vindex.search(queries[short], k, candidates=candidates, thorough=True)
                if vindex.lossy:
                    s2, i2 = index.rerank(queries[short], i2, k)
            scores[short], ids[short] = s2, i2
    return scores, ids


def _exact_scan(index: Index, vindex: VectorIndex, queries: np.ndarray, ids: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the stored vectors of `ids` (read from `vindex` when it holds them)."""
    vectors = vindex.exact_vectors(ids) if len(ids) else None
    if vectors is None:
        vectors = index.vectors_of(ids)
    return exact_topk(queries, vectors, k, ids=ids)


def _to_hits(index: Index, generation: int, scores: np.ndarray, ids: np.ndarray, k: int,
             excluded: set[int]) -> list[list[Hit]]:
    """Hits for each query's (scores, ids) row; the rows of all queries' ids are read at once."""
    wanted = np.unique(ids[ids >= 0]).tolist() if len(ids) > 1 else [i for i in ids[0].tolist() if i >= 0]
    return _hits_of_rows(index.rows(wanted, generation), scores, ids, k, excluded)


def _hits_of_rows(rows: dict, scores: np.ndarray, ids: np.ndarray, k: int, excluded: set[int]) -> list[list[Hit]]:
    ids_list = ids.tolist()
    scores_list = scores.tolist()
    out = []
    get = rows.get
    for row_scores, row_ids in zip(scores_list, ids_list):
        hits: list[Hit] = []
        rank = 0
        for score, item_id in zip(row_scores, row_ids):
            row = get(item_id)  # None for -1 (no hit), and for an id deleted since the vector index was read
            if row is None or item_id in excluded:
                continue
            rank += 1
            hits.append(Hit(rank, row[0], score, row[4], row[2], item_id, row[1]))
            if rank == k:
                break
        out.append(hits)
    return out


class Results:
    """The hits of a batch of queries in columns, all read at one generation of the index.

    `ids` (int64) and `scores` (float32) are (queries, k) arrays, best first; a row with fewer
    than k hits is padded with id -1 and score -inf. The rows of the hit items (key, kind, text,
    path, metadata) are read in one statement per call (or come from the row cache); `keys()`,
    `metadata(q)` and `texts()` read them when called, and `hits()` makes the same `Hit`
    lists as search_vectors."""

    __slots__ = ("ids", "scores", "_rows", "_unique", "_inverse")

    def __init__(self, index: Index, generation: int, scores: np.ndarray, ids: np.ndarray, k: int, _excluded=()):
        scores, ids = scores[:, :k], ids[:, :k]
        flat = ids.ravel()
        self._unique, self._inverse = np.unique(flat, return_inverse=True)
        present = self._unique[self._unique >= 0]
        self._rows = index.rows(present.tolist(), generation)
        if len(self._rows) < len(present):  # (never inside one snapshot; kept exact should it happen)
            gone = np.isin(ids, present[~np.isin(present, np.fromiter(self._rows, np.int64, len(self._rows)))])
            ids, scores = ids.copy(), scores.copy()
            ids[gone], scores[gone] = -1, -np.inf
            order = np.argsort(ids < 0, axis=1, kind="stable")  # hits first, in their order
            ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
            self._unique, self._inverse = np.unique(ids.ravel(), return_inverse=True)
        self.ids, self.scores = ids, scores

    def __len__(self) -> int:
        return len(self.ids)

    def _column(self, field: int) -> np.ndarray:
        rows = self._rows
        values = np.array([None] + [rows[i][field] for i in self._unique.tolist() if i >= 0], dtype=object)
        offset = 0 if len(self._unique) and self._unique[0] < 0 else 1  # slot 0 holds None, for -1
        return values[self._inverse.reshape(self.ids.shape) + offset]

    def keys(self) -> np.ndarray:
        """The hits' keys, an object array shaped like `ids` (None past the last hit)."""
        return self._column(0)

    def texts(self) -> np.ndarray:
        """The hits' texts, shaped like `ids` (None for items without text and past the last hit)."""
        return self._column(2)

    def metadata(self, query: int) -> list[dict]:
        """The metadata of one query's hits, best first."""
        rows = self._rows
        return [rows[i][4] for i in self.ids[query].tolist() if i >= 0]

    def hits(self) -> list[list[Hit]]:
        """The hits as Hit lists, as search_vectors returns them."""
        return _hits_of_rows(self._rows, self.scores, self.ids, self.ids.shape[1], set())


def above(hits: list[Hit], min_score: float | None) -> list[Hit]:
    """The hits scoring at least `min_score` (all of them when it is None)."""
    return hits if min_score is None else [h for h in hits if h.score >= min_score]


def list_items(index: Index, *, where: str | None = None, limit: int | None = None, offset: int = 0) -> list[Hit]:
    """Stored items (those matching `where`) in id order (the order they were added), as Hits
    with rank = position (from 1) and score 1.0; at most `limit` of them from `offset`."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise InputError(f"limit must be a whole number of at least 0, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise InputError(f"offset must be a whole number of at least 0, got {offset!r}")
    with index.snapshot():
        allowed = index.matching_ids(where)
        ids = index.ids() if allowed is None else np.sort(np.asarray(allowed, dtype=np.int64))
        ids = ids[offset:] if limit is None else ids[offset:offset + limit]
        rows = index.fetch(ids)
    return [Hit(offset + n, rows[i]["key"], 1.0, rows[i]["metadata"], rows[i]["text"], int(i), rows[i]["kind"])
            for n, i in enumerate(ids.tolist(), start=1) if i in rows]


def get_item(index: Index, key: str, *, vector: bool = False) -> dict:
    """One stored item by key: {id, key, kind, text, path, metadata}, and its stored `vector`
    (float32) when asked; KeyNotFound names the key when no item has it."""
    with index.snapshot():
        found = index.lookup([key])
        if key not in found:
            raise KeyNotFound(f"no item with key {key!r} in {index.directory}")
        item_id = found[key][0]
        item = {"id": item_id, **index.fetch([item_id])[item_id]}
        if vector:
            item["vector"] = index.vectors_of([item_id])[0]
    return item


__all__ = ["Hit", "Results", "above", "list_items", "get_item", "search", "similar", "search_vectors",
           "search_batch", "encode_query", "encode_image"]
