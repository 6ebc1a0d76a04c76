"""What the engine adds to a FAISS search, per query, measured in this thread's CPU time
(`time.thread_time`), which other processes on a shared machine disturb far less than wall time:

- single: `search_vectors(index, q, k=10)` (Hits with keys and metadata) against the engine's own
  FAISS index searched directly with the same parameters (`index.search(q, 10, params=...)`),
  one query at a time, on one thread;
- batch: `search_batch(index, Q, k=10)` with `Results.keys()` read, against the same FAISS call
  on the whole batch, on one thread (so the CPU time is the work, not the wait);
- and the parts of the single path: checking and normalising the query, the snapshot (the
  statement-free generation check), the FAISS search through the engine's wrapper, the hits.

The index: --n items (default 100,000) of --dim-d random unit vectors (`vectors:<dim>`,
default 50), HNSW32 at efSearch --ef (default 64), with a small metadata dict per item. The
row cache is warm (each query set is run once before timing): what a long-lived process pays.
Each figure is the minimum over --repeat interleaved runs (the least disturbed). On a machine
loaded far beyond its cores, even CPU time varies by 2x between runs (caches and the sibling
hyperthread are shared): read the parts, not only the totals.

    python benchmarks/bench_query_overhead.py [--n 100000] [--dim 50] [--ef 64] [--queries 500]
        [--repeat 15] [--workdir DIR] [--quick]
Results: benchmarks/results/query_overhead.jsonl (not with --quick).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data as D  # noqa: E402

K = 10


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--workdir", type=Path, help="keep the index here (reused when it has --n items)")
    parser.add_argument("--quick", action="store_true", help="20,000 items, 200 queries, 5 runs; nothing recorded")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries, args.repeat = 20_000, 200, 5
    env = D.environment()
    print(f"bench_query_overhead: {vars(args)}\n{env}", flush=True)

    import faiss

    from latent.indexer import Index
    from latent.indexer.encoders import normalize
    from latent.search import query as q_module
    from latent.search import search_batch, search_vectors

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="latent-overhead-"))
    directory = workdir / f"overhead-{args.n}-{args.dim}"
    if not D.cached_index(directory, args.n):
        started = time.perf_counter()
        with Index.create(directory, encoder=f"vectors:{args.dim}", index_type="HNSW32") as index:
            index.add_vectors([f"v{i}" for i in range(args.n)], unit_rows(args.n, args.dim, 0),
                              metadata=[{"rank": i, "group": i % 10} for i in range(args.n)])
        print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)

    faiss.omp_set_num_threads(1)
    index = Index.open(directory)
    vindex = index.vectors
    vindex.params["efSearch"] = args.ef
    queries = unit_rows(args.queries, args.dim, 1)
    base = getattr(vindex, "base", vindex)  # a SegmentedIndex: its base (an add of --n items in one call merges)
    segments = len(getattr(vindex, "segments", ()))
    print(f"  {vindex.ntotal:,} vectors, {segments} segment(s) beside the base", flush=True)
    params = base._search_params(None, K)
    raw = base.index
    scores, ids = vindex.search(queries[:1], K)

    def single_engine():
        for q in queries:
            search_vectors(index, q, k=K)

    def single_faiss():
        for q in queries:
            raw.search(q[None], K, params=params)

    def batch_engine():
        search_batch(index, queries, k=K).keys()

    def batch_faiss():
        raw.search(queries, K, params=params)

    def part_check_normalise():
        for q in queries:
            normalize(index.check_vectors(q))

    def part_snapshot():
        for _ in queries:
            with index.snapshot(vectors=True, lazy=True):
                pass

    def part_wrapped_search():
        for q in queries:
            vindex.search(q[None], K)

    def part_hits():
        generation = vindex.generation
        for _ in queries:
            q_module._to_hits(index, generation, scores, ids, K, set())

    runs = [single_engine, single_faiss, batch_engine, batch_faiss, part_check_normalise, part_snapshot,
            part_wrapped_search, part_hits]
    for run in runs:  # warm: the row cache, lazy imports
        run()
    found = search_batch(index, queries, k=K).ids  # item ids, which the engine's FAISS index holds
    same = np.mean((found == raw.search(queries, K, params=params)[1]).all(axis=1))
    times: dict[str, list[float]] = {run.__name__: [] for run in runs}
    for rep in range(args.repeat):
        for run in (runs if rep % 2 == 0 else runs[::-1]):
            started = time.thread_time()
            run()
            times[run.__name__].append((time.thread_time() - started) / len(queries) * 1e6)
    us = {name: round(min(values), 2) for name, values in times.items()}
    index.close()
    summary = {
        "single_overhead_us": round(us["single_engine"] - us["single_faiss"], 2),
        "single_ratio": round(us["single_faiss"] / us["single_engine"], 3),
        "batch_overhead_us": round(us["batch_engine"] - us["batch_faiss"], 2),
        "batch_ratio": round(us["batch_faiss"] / us["batch_engine"], 3),
        "same_results": float(same),
    }
    print("\nCPU time per query (us, min over runs):")
    for name, value in us.items():
        print(f"  {name:22s} {value:9.2f}")
    print(f"\nsingle: engine adds {summary['single_overhead_us']:.1f} us per query; engine speed = "
          f"{summary['single_ratio']:.3f}x raw FAISS at the same parameters (target >= 0.95: "
          f"{'MET' if summary['single_ratio'] >= 0.95 else 'NOT MET'})")
    print(f"batch:  engine adds {summary['batch_overhead_us']:.1f} us per query; engine speed = "
          f"{summary['batch_ratio']:.3f}x raw FAISS (target >= 0.95: "
          f"{'MET' if summary['batch_ratio'] >= 0.95 else 'NOT MET'})")
    print(f"the engine's keys equal FAISS's for {same:.1%} of the queries")
    if not args.quick:
        path = D.append_result("query_overhead", {"args": {k: str(v) for k, v in vars(args).items()},
                                                  "environment": env, "cpu_us_per_query": us, "summary": summary})
        print(f"appended to {path}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
