"""The query path: a search that memory can answer runs no SQL statement (the store's generation
is known unchanged from SQLite's wal-index header), yet sees every write of another connection
at once; a write landing between that check and a statement is caught and the search starts
again; batch results in columns (search_batch) equal the Hit lists of search_vectors."""

from __future__ import annotations

import numpy as np
import pytest

from latent.indexer import Index
from latent.search import Results, search_batch, search_vectors

N, DIM = 400, 32


@pytest.fixture
def made(tmp_path):
    rng = np.random.default_rng(11)
    index = Index.create(tmp_path / "idx", encoder="fake", index_type="HNSW16")
    index.add_vectors([f"k{i}" for i in range(N)], rng.standard_normal((N, DIM)).astype(np.float32),
                      metadata=[{"i": i, "tag": ["a", "b"][i % 2]} for i in range(N)], texts=[f"t{i}" for i in range(N)])
    index.delete(["k5", "k6"])
    yield index, rng.standard_normal((25, DIM)).astype(np.float32)
    index.close()


def statements(index) -> list[str]:
    """Every SQL statement this thread's connection runs from now on (appended as they run)."""
    seen: list[str] = []
    index.store._connection().conn.set_trace_callback(seen.append)
    return seen


def test_a_search_answered_from_memory_runs_no_statement(made):
    index, queries = made
    first = search_vectors(index, queries[0], k=5)  # reads the generation and the rows once
    seen = statements(index)
    for _ in range(3):
        assert search_vectors(index, queries[0], k=5) == first
    assert seen == []
    search_vectors(index, queries[1], k=5, where="tag = b")  # a new filter and new rows: statements, read once
    assert any("json_extract" in sql for sql in seen) and "BEGIN" in seen
    seen.clear()
    search_vectors(index, queries[1], k=5, where="tag = b")
    assert seen == []


def test_writes_of_another_connection_are_seen_at_once(made):
    index, queries = made
    target = queries[2] / np.linalg.norm(queries[2])
    assert search_vectors(index, target, k=1)[0][0].key != "new"
    seen = statements(index)
    with Index.open(index.directory) as other:  # its own connection: this index's caches know nothing of it
        other.add_vectors(["new"], target[None], metadata=[{"tag": "c"}])
        hits = search_vectors(index, target, k=1, where="tag = c")
        assert [h.key for h in hits[0]] == ["new"] and seen, "the write was not noticed"
        other.delete(["new"])
    assert [h.key for h in search_vectors(index, target, k=3)[0]][0] != "new"


def test_a_write_between_the_check_and_the_first_statement_restarts_the_search(made, monkeypatch):
    index, queries = made
    target = queries[3] / np.linalg.norm(queries[3])
    search_vectors(index, target, k=1)
    with Index.open(index.directory) as other:
        other.add_vectors(["late"], target[None], metadata=[{"tag": "late"}])
    # the check is made to vouch for the old generation, as if the write landed just after it
    vouched = []
    real = type(index.store).unchanged_since

    def stale(store, generation):
        vouched.append(generation)
        return True if len(vouched) == 1 else real(store, generation)

    monkeypatch.setattr(type(index.store), "unchanged_since", stale)
    hits = search_vectors(index, target, k=1, where="tag = late")  # a filter: a statement, which sees the write
    assert [h.key for h in hits[0]] == ["late"]
    assert len(vouched) == 1  # the retry read the generation instead


@pytest.mark.parametrize("where", [None, "tag = a", "i < 30"])
def test_columnar_results_equal_the_hits(made, where):
    index, queries = made
    k = 50 if where == "i < 30" else 7  # more than match: rows padded with -1
    hits = search_vectors(index, queries, k=k, where=where)
    results = search_batch(index, queries, k=k, where=where)
    assert isinstance(results, Results) and len(results) == len(queries)
    assert results.ids.shape == results.scores.shape == (len(queries), k)
    assert results.hits() == hits
    keys, texts = results.keys(), results.texts()
    for q, row in enumerate(hits):
        n = len(row)
        assert results.ids[q, :n].tolist() == [h.id for h in row] and (results.ids[q, n:] == -1).all()
        assert np.allclose(results.scores[q, :n], [h.score for h in row]) and np.isneginf(results.scores[q, n:]).all()
        assert keys[q, :n].tolist() == [h.key for h in row] and all(v is None for v in keys[q, n:])
        assert texts[q, :n].tolist() == [h.text for h in row]
        assert results.metadata(q) == [h.metadata for h in row]
    if where == "i < 30":
        assert (results.ids == -1).any() and all(len(row) == 28 for row in hits)  # k5, k6 deleted
