"""The store's layout: vectors in their own table (migration m004), an index of the older layout
(vectors inside `items`) migrated on open in one transaction, read as it is by a reader without
write access, and left intact by a migration that fails midway; expression indexes of fields
(`index_field`) used by the filters' SQL."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
import sqlite_utils

import latent.indexer.store as store_module
from latent.indexer import Index
from latent.indexer.filters import parse_where
from latent.search import search_vectors

N, DIM = 300, 32
OLD_COLUMNS = "id, key, kind, text, path, content_hash, metadata, vector, generation"


@pytest.fixture
def made(tmp_path):
    """An index of N items (the current layout), its vectors, and the answers of a few searches."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    index = Index.create(tmp_path / "new", encoder="fake", index_type="flat")
    index.add_vectors([f"k{i}" for i in range(N)], vectors,
                      metadata=[{"year": 1900 + i % 50, "tag": ["a", "b", "c"][i % 3]} for i in range(N)])
    index.delete(["k0", "k1"])
    index.close()
    return tmp_path / "new", vectors


def answers(index) -> list:
    queries = np.random.default_rng(4).standard_normal((3, DIM)).astype(np.float32)
    return [[(h.key, round(h.score, 5), h.metadata) for h in hits]
            for where in (None, "year = 1910", "tag in (a, c) and year >= 1940")
            for hits in search_vectors(index, queries, k=5, where=where)]


def old_layout(new, directory):
    """A copy of the index at `new` in the layout of schema version 3: `items` holds each vector."""
    shutil.copytree(new, directory)
    (directory / "latent.db").unlink()
    old = sqlite_utils.Database(sqlite3.connect(directory / "latent.db", isolation_level=None))
    for migration in store_module.MIGRATIONS[:3]:
        migration(old)
    old.execute("PRAGMA user_version = 3")
    old.execute("ATTACH DATABASE ? AS new", [str(new / "latent.db")])
    for table in ("manifest", "deleted", "skipped"):
        old.execute(f"INSERT INTO {table} SELECT * FROM new.{table}")
    old.execute(f"INSERT INTO items({OLD_COLUMNS}) SELECT i.id, key, kind, text, path, content_hash, metadata, "
                "v.vector, generation FROM new.items AS i JOIN new.vectors AS v ON v.id = i.id")
    old.execute("DETACH DATABASE new")
    old.conn.close()


def columns(directory) -> tuple[int, list[str], list[str]]:
    conn = sqlite3.connect(directory / "latent.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return (conn.execute("PRAGMA user_version").fetchone()[0],
                [r[1] for r in conn.execute("PRAGMA table_info(items)")], tables)
    finally:
        conn.close()


def test_new_indexes_keep_vectors_out_of_items(made):
    directory, vectors = made
    version, items, tables = columns(directory)
    assert version == len(store_module.MIGRATIONS) and "vector" not in items and "vectors" in tables
    with Index.open(directory) as index:
        ids = index.store.ids()
        assert len(ids) == N - 2 and index.check()["ok"]
        unit = vectors[2:5] / np.linalg.norm(vectors[2:5], axis=1)[:, None]
        assert np.allclose(index.vectors_of(ids[:3]), unit, atol=1e-6)
        # a delete takes the vector with its item
        assert index.store.db.execute("SELECT count(*) FROM vectors").fetchone()[0] == N - 2


def test_an_old_layout_index_is_read_as_it_is_then_migrated_on_open(made, tmp_path, monkeypatch):
    new, _ = made
    with Index.open(new) as index:
        expected = answers(index)
    old = tmp_path / "old"
    old_layout(new, old)
    assert columns(old)[:2] == (3, OLD_COLUMNS.split(", "))

    # a reader without write access does not migrate: it reads the vectors where they are
    monkeypatch.setattr(store_module, "_writable", lambda path: False)
    with Index.open(old) as index:
        assert index.store.read_only
        assert answers(index) == expected and index.check()["ok"]
        assert index.vector_of("k7") is not None
    assert columns(old)[:2] == (3, OLD_COLUMNS.split(", "))
    monkeypatch.undo()

    # a migration that fails midway (after copying the vectors, before dropping the column) leaves the old layout
    original = list(store_module.MIGRATIONS)

    def interrupted(db):
        db.execute("CREATE TABLE vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
        db.execute("INSERT INTO vectors(id, vector) SELECT id, vector FROM items")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*original[:3], interrupted, *original[4:]])
    with pytest.raises(Exception, match="disk I/O error"):
        Index.open(old)
    assert columns(old) == (3, OLD_COLUMNS.split(", "), ["deleted", "items", "manifest", "skipped",
                                                          "sqlite_sequence"])
    monkeypatch.setattr(store_module, "MIGRATIONS", original)

    # a writer's open migrates it: the same items, vectors and answers, the vectors in their own table
    with Index.open(old) as index:
        assert answers(index) == expected and index.check()["ok"]
        index.add_vectors(["fresh"], np.ones((1, DIM), np.float32), metadata=[{"year": 1910}])
        assert "fresh" in [h.key for h in search_vectors(index, np.ones(DIM, np.float32), k=1)[0]]
    version, items, tables = columns(old)
    assert version == len(store_module.MIGRATIONS) and "vector" not in items and "vectors" in tables


def test_field_indexes_are_used_by_filters_and_change_no_answer(made):
    directory, _ = made
    with Index.open(directory) as index:
        expected = answers(index)
        sql, params = parse_where("year = 1910")
        assert not any("field:" in step for step in index.store.query_plan(sql, params))
        assert index.index_field("year") and not index.index_field("year")
        assert index.indexed_fields() == ["year"]
        assert answers(index) == expected
        for where in ("year = 1910", "year in (1910, 1911)", "year >= 1940", "year < 1903 and tag = a"):
            plan = index.store.query_plan(*parse_where(where))
            assert any(step.startswith("SEARCH items USING INDEX field:year") for step in plan), (where, plan)
        # under `not`, a missing field must read as false first: those conditions scan
        assert index.store.query_plan(*parse_where("not year < 1910")) == ["SCAN items"]
        assert index.index_field("year", drop=True) and index.indexed_fields() == []
        assert answers(index) == expected


def test_index_field_command_indexes_lists_and_drops(made):
    from click.testing import CliRunner

    from latent.cli import cli

    directory, _ = made
    run = CliRunner().invoke
    result = run(cli, ["index-field", str(directory), "year", "tag"])
    assert result.exit_code == 0, result.output
    assert "Indexed year" in result.stdout and "Indexed fields of" in result.stdout
    result = run(cli, ["--json", "index-field", str(directory)])
    assert result.exit_code == 0 and '"indexed": [\n    "tag",\n    "year"\n  ]' in result.stdout, result.stdout
    result = run(cli, ["index-field", str(directory), "tag", "--drop"])
    assert "Dropped the index of tag" in result.stdout and result.stdout.rstrip().endswith(": year")
    result = run(cli, ["index-field", str(directory), "bad-name"])
    assert result.exit_code != 0 and "bad field name 'bad-name'" in result.stderr, result.output


def test_a_large_batch_gets_a_page_cache_for_its_transaction_only(tmp_path, monkeypatch):
    """A batch of many rows runs with SQLite's page cache raised to hold the pages it changes
    (Store._page_cache_for); afterwards the cache is what it was, and a small batch keeps it."""
    monkeypatch.setattr(store_module, "WRITE_CACHE_BYTES_PER_ROW", 64 << 10)  # 64 KiB a row: 300 rows > 2 MB
    seen = []
    bump = store_module.Store._bump_generation

    def recording(self):
        seen.append(self.conn.execute("PRAGMA cache_size").fetchone()[0])
        return bump(self)

    monkeypatch.setattr(store_module.Store, "_bump_generation", recording)
    index = Index.create(tmp_path / "i", encoder="fake", index_type="flat")
    before = index.store.conn.execute("PRAGMA cache_size").fetchone()[0]
    vectors = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    index.add_vectors([f"k{i}" for i in range(N)], vectors)
    index.add_vectors(["one"], vectors[:1])
    assert seen == [-(N * (64 << 10) // 1024), before]  # KiB, negative: a size, not a page count
    assert index.store.conn.execute("PRAGMA cache_size").fetchone()[0] == before
    assert len(index.store.ids()) == N + 1
    index.close()


def test_read_ahead_yields_the_callers_snapshot_even_when_a_write_came_between(made):
    """Store.read_ahead reads in a thread of its own at the caller's generation; when a write
    committed after the caller's snapshot began, the caller reads in its own snapshot: the
    blocks are those of its generation either way, in order."""
    directory, _ = made
    with Index.open(directory) as index, Index.open(directory) as writer:
        store = index.store

        def blocks():
            return store.iter_vectors(DIM, block=64)

        with store.snapshot():
            generation = store.generation()
            expected = [(ids.tolist(), vectors.tobytes()) for ids, vectors in blocks()]
            assert len(expected) > 2
            assert [(i.tolist(), v.tobytes()) for i, v in store.read_ahead(blocks, generation)] == expected
            writer.add_vectors(["late"], np.ones((1, DIM), np.float32))  # another connection commits
            assert store.generation() == generation  # (the caller's snapshot has not moved)
            assert [(i.tolist(), v.tobytes()) for i, v in store.read_ahead(blocks, generation)] == expected
        with store.snapshot():
            now = [ids for ids, _ in store.read_ahead(blocks, store.generation())]
            assert sum(len(ids) for ids in now) == sum(len(ids) for ids, _ in expected) + 1


def test_read_ahead_raises_the_readers_error_and_stops_when_the_caller_stops(made):
    directory, _ = made
    with Index.open(directory) as index:
        store = index.store

        def failing():
            yield from store.iter_vectors(DIM, block=64)
            raise store_module.IndexCorrupt("a damaged block")

        with store.snapshot():
            generation = store.generation()
            with pytest.raises(store_module.IndexCorrupt, match="a damaged block"):
                list(store.read_ahead(failing, generation))
            ahead = store.read_ahead(lambda: store.iter_vectors(DIM, block=16), generation)
            first = next(ahead)
            ahead.close()  # the reading thread ends (joined), not blocked on a full hand-off
            assert len(first[0]) == 16
