"""The object API: `Collection`, an index you can write and search. It adds the reading side
(search, similar, paths, analogies, expressions) to the writing side's `Index`, so one object
does both; `latent.create` and `latent.open` return one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latent.indexer.builtin import open_index
from latent.indexer.errors import InputError
from latent.indexer.index import Index, Progress, _no_progress

from . import clusters, dupes, explore, keyword, query as queries
from .query import Hit, above


class Collection(Index):
    """A latent index: `add`, `add_vectors`, `delete`, `info`, `check`, `tune`, `rebuild` (from
    Index) and `search`, `similar`, `search_vectors`, `search_batch`, `interpolate`, `analogy`."""

    def search(self, query: str | np.ndarray | None = None, *, k: int = 10, where: str | None = None,
               expr: str | None = None, include_terms: bool = False, min_score: float | None = None,
               mode: str = "vector", syntax: str = "words", collapse: float | None = None) -> list[Hit]:
        """The k nearest items to a text (encoded by the index's encoder), a vector, or a vector
        expression such as `expr='king - man + woman'` (whose keys are left out unless
        `include_terms`); `where` filters on metadata first; hits below `min_score` are dropped;
        with `collapse` (a cosine threshold such as 0.95) near-identical hits are folded into the
        best-ranked one (`hit.folded` names them) and k distinct hits come back.

        `mode="keyword"` ranks the texts by BM25 (SQLite FTS5), `mode="hybrid"` fuses both
        rankings by reciprocal rank fusion (see search/keyword.py); the score is then the BM25
        or the fused score. Their query is plain words (`syntax="words"`) or FTS5 query
        syntax (`syntax="fts5"`)."""
        if (query is None) == (expr is None):
            raise InputError("give a query (a text or a vector) or an expression, not both"
                             if expr is not None else "the query is missing: give a text, a vector or an expression")
        if expr is not None:
            if mode != "vector":
                raise InputError(f"an expression is vector arithmetic: it searches in mode vector, not {mode!r}")

            def find(n: int) -> list[Hit]:
                return explore.search_expression(self, expr, k=n, where=where, include_terms=include_terms)
        else:
            if mode == "vector" and isinstance(query, str):  # encoded once, however often collapse asks
                query = queries.encode_query(self, query)

            def find(n: int) -> list[Hit]:
                return keyword.search_by_mode(self, query, mode=mode, k=n, where=where, syntax=syntax)
        hits = find(k) if collapse is None else dupes.distinct_hits(self, find, k=k, threshold=collapse)
        return above(hits, min_score)

    def search_vectors(self, vectors: np.ndarray, *, k: int = 10, where: str | None = None) -> list[list[Hit]]:
        """Hits for each row of `vectors` (float32, (n, dim) or (dim,))."""
        return queries.search_vectors(self, vectors, k=k, where=where)

    def search_batch(self, vectors: np.ndarray, *, k: int = 10, where: str | None = None) -> queries.Results:
        """The k nearest items of each row of `vectors`, in columns: `.ids` and `.scores` arrays,
        `.keys()`, `.metadata(q)`, and `.hits()` for Hit lists (see search.query.Results)."""
        return queries.search_batch(self, vectors, k=k, where=where)

    def similar(self, *, key: str | None = None, vector: np.ndarray | None = None, image: str | Path | None = None,
                k: int = 10, where: str | None = None, min_score: float | None = None,
                include_self: bool = False, collapse: float | None = None) -> list[Hit]:
        """The k nearest items to a stored item, a vector or an image file; the item itself (or a
        stored image with the same bytes as the file) is left out unless `include_self`;
        `min_score` and `collapse` as for `search`."""
        def find(n: int) -> list[Hit]:
            return queries.similar(self, key=key, vector=vector, image=image, k=n, where=where,
                                   include_self=include_self)
        hits = find(k) if collapse is None else dupes.distinct_hits(self, find, k=k, threshold=collapse)
        return above(hits, min_score)

    def duplicates(self, *, threshold: float = dupes.DEFAULT_THRESHOLD, where: str | None = None,
                   progress: Progress = _no_progress) -> list[dupes.DuplicateGroup]:
        """Groups of near-duplicate items (cosine similarity >= `threshold`, linked transitively),
        largest first, each with its representative first (see latent.search.dupes)."""
        return dupes.find_duplicates(self, threshold=threshold, where=where, progress=progress)

    def cluster(self, k: int = 20, *, field: str = "cluster", where: str | None = None, seed: int = 0,
                replace: bool = False, top: int = 5, progress: Progress = _no_progress) -> clusters.Clustering:
        """FAISS k-means into `k` clusters; each item's cluster number is stored in its metadata
        `field` (a field a user set is replaced only with `replace=True`)."""
        return clusters.cluster(self, k=k, field=field, where=where, seed=seed, replace=replace, top=top,
                                progress=progress)

    def items(self, *, where: str | None = None, limit: int | None = None, offset: int = 0) -> list[Hit]:
        """The stored items (those matching `where`) in insertion order, as Hits with rank = position
        and score 1.0: at most `limit` from `offset`."""
        return queries.list_items(self, where=where, limit=limit, offset=offset)

    def get(self, key: str, *, vector: bool = False) -> dict:
        """One item by key: {id, key, kind, text, path, metadata} and with `vector`, its stored
        vector (float32); an unknown key raises KeyNotFound."""
        return queries.get_item(self, key, vector=vector)

    def interpolate(self, a: str, b: str, *, steps: int = 10, method: str = "slerp", exclude_endpoints: bool = False,
                    where: str | None = None) -> list[explore.Step]:
        """The nearest item at each of `steps` points from A to B (keys, texts or image files)."""
        return explore.interpolate(self, a, b, steps=steps, method=method, exclude_endpoints=exclude_endpoints,
                                   where=where)

    def analogy(self, a: str, b: str, c: str, *, k: int = 10, method: str = "add",
                include_inputs: bool = False) -> list[Hit]:
        """"a is to b as c is to ?" by 3CosAdd (`method="add"`) or 3CosMul (`"mul"`)."""
        return explore.analogy(self, a, b, c, k=k, method=method, include_inputs=include_inputs)


def create(directory: str | Path, *, encoder: str = "minilm", index_type: str = "auto", params: dict | None = None,
           target_recall: float | None = None, runtime: str | None = None) -> Collection:
    """A new, empty index in `directory` (see `latent encoders` for the encoder names; `runtime`,
    onnx or torch, runs the bundled networks)."""
    return Collection.create(directory, encoder=encoder, index_type=index_type, params=params,
                             target_recall=target_recall, runtime=runtime)


def open(directory: str | Path, *, progress: Progress = _no_progress) -> Collection:  # noqa: A001 (as gzip.open)
    """An existing index, or a built-in one by name (`@words`, `@sentences`, `@photos`), built
    in the cache directory on first use."""
    return open_index(directory, progress=progress, cls=Collection)


def _collection(index: Collection | str | Path) -> Collection:
    return index if isinstance(index, Collection) else open(index)


def analogy(a: str, b: str, c: str, *, index: Collection | str | Path = "@words", k: int = 10,
            method: str = "add", include_inputs: bool = False) -> list[Hit]:
    """"a is to b as c is to ?" on an index (all GloVe words unless `index` says otherwise)."""
    return _collection(index).analogy(a, b, c, k=k, method=method, include_inputs=include_inputs)


def interpolate(index: Collection | str | Path, a: str, b: str, **options) -> list[explore.Step]:
    """The path from A to B through an index (a Collection, a directory or a built-in name)."""
    return _collection(index).interpolate(a, b, **options)
