"""The first query with a new filter: a search (`search_vectors(index, q, k=10, where=...)`, hits
with keys and metadata) whose filter has not been used before, so its matching ids are not in
memory and SQLite must find them, on an index of --n items (default 1,000,000) of --dim-d
vectors (default 384, `vectors:<dim>`, Flat: the filtered search is an exact scan either way).

Metadata of item i: `cat` = "c<i % 1000>" and `rank` = i (both indexed with `Index.index_field`),
`group` = "g<i * 7919 % 1000>" and `price` = i * 7919 % 1_000_003 (not indexed). Each filter
matches about 1,000 items; every query uses a value not used before (the filter cache of the
store never answers). Four kinds, --queries of each (default 21), p50 / p95 in ms:

- indexed equality `cat = c<j>`, indexed range `rank >= a and rank < a + 1000`,
- unindexed equality `group = g<j>`, unindexed range `price >= a and price < a + 1000`.

With --old-layout the unindexed kinds are measured again on a copy of the index in the layout
before migration m004 (each vector blob inside its `items` row), read as a reader without write
access reads it (no migration): what a filter scan cost before. The OS page cache is warm (one
scan of each table runs first); a cold disk adds its read time.

Targets: p50 < 100 ms on an indexed field, < 500 ms on a field without an index (1M items).

    python benchmarks/bench_filters.py [--n 1000000] [--dim 384] [--queries 21] [--old-layout]
        [--workdir DIR] [--quick]
Results: benchmarks/results/filters.jsonl (not with --quick).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data as D  # noqa: E402

BLOCK = 100_000


def build(directory: Path, n: int, dim: int) -> None:
    from latent.indexer import Index

    rng = np.random.default_rng(0)
    index = Index.create(directory, encoder=f"vectors:{dim}", index_type="flat")
    started = time.perf_counter()
    vectors, keys, metadata = [], [], []
    for start in range(0, n, BLOCK):
        ids = range(start, min(n, start + BLOCK))
        vectors.append(rng.standard_normal((len(ids), dim)).astype(np.float32))
        keys += [f"v{i}" for i in ids]
        metadata += [{"cat": f"c{i % 1000}", "rank": i, "group": f"g{i * 7919 % 1000}", "price": i * 7919 % 1_000_003}
                     for i in ids]
    index.add_vectors(keys, np.concatenate(vectors), metadata=metadata)  # one call: one save of vectors.faiss
    for field in ("cat", "rank"):
        index.index_field(field)
    index.close()
    print(f"  built {n:,} items in {time.perf_counter() - started:.0f} s", flush=True)


def filters(kind: str, count: int, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    values = rng.choice(1000, size=count, replace=False)
    starts = rng.choice(max(1, n - 1000), size=count, replace=False)
    return {
        "indexed equality": [f"cat = c{v}" for v in values],
        "indexed range": [f"rank >= {a} and rank < {a + 1000}" for a in starts],
        "unindexed equality": [f"group = g{v}" for v in values],
        "unindexed range": [f"price >= {a} and price < {a + 1000}" for a in starts * 7 % 1_000_003],
    }[kind]


def first_queries(index, kind: str, count: int, n: int, seed: int) -> dict:
    from latent.search import search_vectors

    query = np.random.default_rng(seed).standard_normal(index.dim).astype(np.float32)
    times, matched = [], []
    for where in filters(kind, count, n, seed):
        started = time.perf_counter()
        hits = search_vectors(index, query, k=10, where=where)[0]
        times.append((time.perf_counter() - started) * 1000)
        matched.append(len(index.matching_ids(where)))
        assert len(hits) == min(10, matched[-1]), where
    times.sort()
    return {"kind": kind, "p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
            "queries": count, "matched_median": statistics.median(matched)}


def old_layout_copy(directory: Path, target: Path) -> None:
    """The index at `directory` in the layout of schema version 3 (vectors inside `items`)."""
    from latent.indexer import store as store_module

    shutil.copytree(directory, target)
    (target / "latent.db").unlink()
    old = store_module.sqlite_utils.Database(sqlite3.connect(target / "latent.db", isolation_level=None))
    for migration in store_module.MIGRATIONS[:3]:
        migration(old)
    old.execute("ATTACH DATABASE ? AS new", [str(directory / "latent.db")])
    with old.conn:
        old.execute("BEGIN")
        for table in ("manifest", "deleted", "skipped"):
            old.execute(f"INSERT INTO {table} SELECT * FROM new.{table}")
        old.execute("INSERT INTO items(id, key, kind, text, path, content_hash, metadata, vector, generation) "
                    "SELECT i.id, key, kind, text, path, content_hash, metadata, v.vector, generation "
                    "FROM new.items AS i JOIN new.vectors AS v ON v.id = i.id")
    old.execute("DETACH DATABASE new")
    old.execute("PRAGMA user_version = 3")
    old.conn.close()


def warm(index) -> None:
    """Read each table once, so the OS page cache holds them (the timings are of a warm cache)."""
    conn = index.store.conn
    for sql in ("SELECT sum(length(metadata)) FROM items", "SELECT sum(length(vector)) FROM vectors"):
        conn.execute(sql).fetchone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=21, help="new filters of each kind")
    parser.add_argument("--old-layout", action="store_true", help="also time the unindexed kinds on the old layout")
    parser.add_argument("--workdir", type=Path, help="keep the index here (reused when it has --n items)")
    parser.add_argument("--quick", action="store_true", help="100,000 items of 64-d, 7 filters each; nothing recorded")
    args = parser.parse_args()
    if args.quick:
        args.n, args.dim, args.queries = 100_000, 64, 7
    env = D.environment()
    print(f"bench_filters: {vars(args)}\n{env}", flush=True)
    from latent.indexer import Index
    from latent.indexer import store as store_module

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="latent-filters-"))
    directory = workdir / f"filters-{args.n}-{args.dim}"
    if not D.cached_index(directory, args.n):
        build(directory, args.n, args.dim)
    kinds = ("indexed equality", "indexed range", "unindexed equality", "unindexed range")
    points = []
    with Index.open(directory) as index:
        print(f"  latent.db {(directory / 'latent.db').stat().st_size / 2**20:,.0f} MiB; indexed fields "
              f"{index.indexed_fields()}", flush=True)
        warm(index)
        for seed, kind in enumerate(kinds):
            point = {"layout": "vectors table", **first_queries(index, kind, args.queries, args.n, seed)}
            points.append(point)
            print(f"  {point['layout']:14} {kind:20} p50 {point['p50_ms']:8.1f} ms  p95 {point['p95_ms']:8.1f} ms  "
                  f"(~{point['matched_median']:,.0f} matches)", flush=True)
    if args.old_layout:
        old = workdir / f"filters-{args.n}-{args.dim}-old"
        shutil.rmtree(old, ignore_errors=True)
        old_layout_copy(directory, old)
        writable = store_module._writable
        store_module._writable = lambda path: False  # a reader without write access: it reads the old layout
        try:
            with Index.open(old) as index:
                warm(index)
                for seed, kind in enumerate(kinds[2:], start=2):
                    point = {"layout": "old (in items)", **first_queries(index, kind, args.queries, args.n, seed)}
                    points.append(point)
                    print(f"  {point['layout']:14} {kind:20} p50 {point['p50_ms']:8.1f} ms  p95 "
                          f"{point['p95_ms']:8.1f} ms", flush=True)
        finally:
            store_module._writable = writable
            shutil.rmtree(old, ignore_errors=True)
    by = {(p["layout"], p["kind"]): p["p50_ms"] for p in points}
    indexed = max(by[("vectors table", k)] for k in kinds[:2])
    unindexed = max(by[("vectors table", k)] for k in kinds[2:])
    summary = {"indexed_p50_ms": indexed, "unindexed_p50_ms": unindexed,
               "indexed_met": indexed < 100, "unindexed_met": unindexed < 500}
    print(f"\nTARGET first query with a new filter, {args.n:,} items: indexed field p50 {indexed:.1f} ms (< 100: "
          f"{'MET' if summary['indexed_met'] else 'NOT MET'}); field without an index p50 {unindexed:.1f} ms (< 500: "
          f"{'MET' if summary['unindexed_met'] else 'NOT MET'})")
    if not args.quick:
        path = D.append_result("filters", {"args": {k: str(v) for k, v in vars(args).items()}, "environment": env,
                                           "points": points, "summary": summary})
        print(f"appended to {path}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
