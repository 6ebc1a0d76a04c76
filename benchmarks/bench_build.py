"""Build costs of the vector index, side by side with raw FAISS in one run, and recall while an
index with a recall target grows in batches (see indexer/tuning.py):

- glove: GloVe words (390,000 by default) added in one call to an HNSW32 index created with
  `target_recall=0.95`, against raw FAISS IndexHNSWFlat with the same M and efConstruction.
  Target: <= 1.25x raw FAISS. Also counted: the vectors added to an approximate index (the
  build must add each once: nothing built item by item and then rebuilt).
- hnsw384: N 384-d clustered vectors into HNSW32, raw FAISS against the engine's build and
  against adds of 1,000 at a time (and of 64, an encoder's batch, on the first 10,000); CPU
  time / wall time says how many cores were used. Target: both cores (a ratio near 2).
- ivfpq: N 64-d clustered vectors (bench_data.clustered_64), the `ivfpq` type: the engine's
  whole add (store, then the IVF-PQ build) and its rebuild from the store, against raw FAISS
  training the same factory on the same number of vectors and adding them. Target: <= 1.2x.
- nprobe: recall@10 of IVF and IVF-PQ at the default search parameters across list counts
  (GloVe with the engine's list count and with 256, 1,024 and 4,096 lists; clustered 64-d),
  against the old fixed nprobe 32. Target: ~0.9 or more at every list count.
- growth: GloVe words in a random order (so that the words held in the index at every size
  and the held-out query words come from the same vocabulary) added in batches of 10% from
  10,000 to N, target 0.95; after every batch the recall@10 of 2,000 held-out words (never
  added) against brute force over the words added so far, and the time each write spent
  tuning.
  Target: never below the target at any size.

    python benchmarks/bench_build.py [--parts glove hnsw384 ivfpq nprobe growth] [--glove N]
        [--hnsw384 N] [--ivfpq N] [--growth N] [--old-policy] [--quick]
Results: benchmarks/results/build.jsonl (one record per part).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data as D  # noqa: E402

K = 10
PARTS = ("glove", "hnsw384", "ivfpq", "nprobe", "growth")


def thread_cpu() -> dict[int, float]:
    """CPU seconds of each thread of this process (Linux /proc), by thread id."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def clock():
    """(wall, cpu, busy threads) since now, as a function. A thread is busy when it ran at least
    a quarter of the busiest one's CPU time: on a shared machine CPU/wall falls with the load,
    while the number of threads that did the work does not."""
    wall, cpu, threads = time.perf_counter(), time.process_time(), thread_cpu()

    def done():
        spent = {t: c - threads.get(t, 0.0) for t, c in thread_cpu().items()}
        top = max(spent.values(), default=0.0)
        busy = sum(1 for c in spent.values() if top and c >= 0.25 * top)
        return time.perf_counter() - wall, time.process_time() - cpu, busy

    return done


def timing(wall: float, cpu: float, busy: int = 0) -> dict:
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cores_used": round(cpu / max(wall, 1e-9), 2),
            "busy_threads": busy}


def clustered(n: int, dim: int, *, seed: int = 3, clusters: int = 4096) -> np.ndarray:
    """n unit vectors of `dim` around Gaussian cluster centres (for 384-d without encoding)."""
    rng = np.random.default_rng(seed)
    centres = D.unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start:start + m] = D.unit(centres[rng.integers(0, clusters, m)]
                                      + rng.standard_normal((m, dim), dtype=np.float32) * 0.05)
    return out


class AddCounter:
    """Counts the vectors added to each kind of FAISS index through VectorIndex.add."""

    def __init__(self):
        from latent.indexer import vector_index as vx

        self.counts: Counter = Counter()
        original = vx.VectorIndex.add

        def add(vindex, ids, vectors):
            self.counts["Flat" if vindex.factory == "Flat" else "approximate"] += len(ids)
            return original(vindex, ids, vectors)

        self.patch = mock.patch.object(vx.VectorIndex, "add", add)

    def __enter__(self):
        self.patch.__enter__()
        return self

    def __exit__(self, *exc):
        self.patch.__exit__(*exc)


def engine_recall(index, queries: np.ndarray, truth: np.ndarray, positions: dict[int, int]) -> float:
    """recall@10 of the index's vector search, ids mapped to base rows."""
    _, ids = index.vectors.search(queries, K)
    rows = np.vectorize(lambda i: positions.get(int(i), -1))(ids)
    return D.recall_at(rows, truth)


def positions_of(index, keys: list[str]) -> dict[int, int]:
    found = index.lookup(keys)
    return {found[k][0]: int(k) for k in keys}


# -- parts ---------------------------------------------------------------------------------------------
def part_glove(n: int, workdir: Path) -> dict:
    import faiss
    from latent.indexer import Index
    from latent.indexer import vector_index as vx

    ds = D.glove_angular()
    base, keys = ds.base[:n], [str(i) for i in range(n)]
    ef_construction = vx.DEFAULT_PARAMS["efConstruction"]
    done = clock()
    raw = faiss.IndexHNSWFlat(ds.dim, 32, faiss.METRIC_INNER_PRODUCT)
    raw.hnsw.efConstruction = ef_construction
    raw.add(base)
    faiss_t = timing(*done())
    del raw
    print(f"  raw FAISS HNSW32 efConstruction {ef_construction}, {n:,} x {ds.dim}-d: {faiss_t}", flush=True)
    with AddCounter() as added:
        done = clock()
        index = Index.create(workdir / "glove", encoder="glove", index_type="hnsw", target_recall=0.95)
        index.add_vectors(keys, base)
        engine_t = timing(*done())
    tuning = index.manifest["tuning"]
    truth = ds.gt if n == len(ds.base) else D.exact_neighbours(base, ds.queries[:2000], K)
    queries = ds.queries if n == len(ds.base) else ds.queries[:2000]
    got = engine_recall(index, queries, truth, positions_of(index, keys))
    index.close()
    ratio = engine_t["wall_s"] / faiss_t["wall_s"]
    print(f"  engine add_vectors + tuned build ({n:,}): {engine_t}; vectors added: {dict(added.counts)}; "
          f"efSearch {tuning['params']}, held-out recall {tuning['recall']}, real queries {got:.4f}")
    print(f"target: GloVe build with a 0.95 target <= 1.25x raw FAISS: {ratio:.2f}x "
          f"({'met' if ratio <= 1.25 else 'NOT met'}); approximate adds {added.counts['approximate']:,} "
          f"for {n:,} items ({'no rebuild' if added.counts['approximate'] == n else 'REBUILT'})")
    return {"n": n, "faiss": faiss_t, "engine": engine_t, "ratio": round(ratio, 3), "added": dict(added.counts),
            "tuning_params": tuning["params"], "tuning_recall": tuning["recall"], "real_recall": round(got, 4)}


def part_hnsw384(n: int, workdir: Path) -> dict:
    import faiss
    from latent.indexer import vector_index as vx

    x = clustered(n, 384)
    ef = vx.DEFAULT_PARAMS["efConstruction"]
    out = {"n": n, "dim": 384, "threads": faiss.omp_get_max_threads()}
    done = clock()
    raw = faiss.IndexHNSWFlat(384, 32, faiss.METRIC_INNER_PRODUCT)
    raw.hnsw.efConstruction = ef
    raw.add(x)
    out["faiss"] = timing(*done())
    del raw

    def blocks():
        for start in range(0, n, 50_000):
            yield np.arange(start, min(n, start + 50_000)), x[start:start + 50_000]

    done = clock()
    vx.VectorIndex.build("hnsw", 384, n, blocks)
    out["engine_build"] = timing(*done())
    done = clock()
    vindex = vx.VectorIndex.new("HNSW32", 384)
    for start in range(0, n, 1000):
        vindex.add(np.arange(start, min(n, start + 1000)), x[start:start + 1000])
    out["engine_adds_of_1000"] = timing(*done())
    small = min(n, 10_000)  # FAISS runs an HNSW add on one thread when a level gets <= 100 new vectors
    done = clock()
    vindex = vx.VectorIndex.new("HNSW32", 384)
    for start in range(0, small, 64):
        stop = min(small, start + 64)
        vindex.add(np.arange(start, stop), x[start:stop])
    out["engine_adds_of_64_first_10k"] = timing(*done())
    for name in ("faiss", "engine_build", "engine_adds_of_1000", "engine_adds_of_64_first_10k"):
        print(f"  {name}: {out[name]}")
    print(f"target: {n:,} x 384-d HNSW32 build uses both cores: CPU/wall {out['engine_build']['cores_used']} "
          f"with {out['engine_build']['busy_threads']} busy threads (build), "
          f"{out['engine_adds_of_1000']['cores_used']} / {out['engine_adds_of_1000']['busy_threads']} (adds of "
          f"1,000), {out['engine_adds_of_64_first_10k']['cores_used']} / "
          f"{out['engine_adds_of_64_first_10k']['busy_threads']} (adds of 64); raw FAISS "
          f"{out['faiss']['cores_used']} / {out['faiss']['busy_threads']}")
    return out


def part_ivfpq(n: int, workdir: Path) -> dict:
    import faiss
    from latent.indexer import Index
    from latent.indexer import vector_index as vx

    x = D.clustered_64(n)
    factory = vx.target_factory("ivfpq", n, 64)
    keys = [str(i) for i in range(n)]
    out = {"n": n, "dim": 64, "factory": factory}
    timings: dict[str, float] = {}
    original = vx.VectorIndex.build.__func__

    def build(cls, *args, **kwargs):  # the engine's build inside its add and rebuild
        done = clock()
        try:
            return original(cls, *args, **kwargs)
        finally:
            timings["build"] = done()

    with mock.patch.object(vx.VectorIndex, "build", classmethod(build)):
        done = clock()
        index = Index.create(workdir / "pq", encoder="vectors:64", index_type="ivfpq")
        for start in range(0, n, 200_000):
            index.add_vectors(keys[start:start + 200_000], x[start:start + 200_000])
        out["engine_add"] = timing(*done())
        out["engine_add_build_part"] = timing(*timings["build"])
        done = clock()
        index.rebuild()
        out["engine_rebuild"] = timing(*done())
        out["engine_rebuild_build_part"] = timing(*timings["build"])
    trained = index.vectors
    index.close()
    ivf = faiss.try_extract_index_ivf(trained.index)
    count = min(n, max(vx.train_threshold(factory, 64), 64 * ivf.nlist, 50_000))
    done = clock()
    raw = faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(faiss.try_extract_index_ivf(raw)).pq.cp.max_points_per_centroid = \
        vx.PQ_TRAIN_POINTS_PER_CENTROID
    sample = np.sort(np.random.default_rng(0).choice(n, size=count, replace=False))
    raw.train(x[sample])
    raw.add_with_ids(x, np.arange(n, dtype=np.int64))
    out["faiss"] = timing(*done())
    for name in ("faiss", "engine_add", "engine_add_build_part", "engine_rebuild", "engine_rebuild_build_part"):
        print(f"  {name}: {out[name]}")
    ratio = out["engine_rebuild"]["wall_s"] / out["faiss"]["wall_s"]
    out["ratio_rebuild"] = round(ratio, 3)
    out["ratio_add"] = round(out["engine_add"]["wall_s"] / out["faiss"]["wall_s"], 3)
    print(f"target: {n:,} x 64-d IVF-PQ build <= 1.2x raw FAISS: rebuild from the store {ratio:.2f}x "
          f"({'met' if ratio <= 1.2 else 'NOT met'}); the whole add (SQLite rows included) {out['ratio_add']:.2f}x")
    return out


def part_nprobe(sizes: list[int], glove_lists: list[int] = ()) -> dict:
    """Recall at the default nprobe: the engine's own `ivf` and `ivfpq` builds on GloVe and on
    clustered 64-d sets of `sizes`, and IVF<L>,Flat on GloVe for each of `glove_lists`."""
    from latent.indexer import vector_index as vx

    rows = []
    sets = [("glove", D.glove_angular())] + [(f"clustered64-{n // 1000}k", None) for n in sizes]
    for name, ds in sets:
        specs = ["ivf", "ivfpq"] + ([f"IVF{nl},Flat" for nl in glove_lists] if ds is not None else [])
        if ds is None:
            n = int(name.split("-")[1][:-1]) * 1000
            both = D.clustered_64(n + 1000)
            base, queries = both[:n], both[n:]
            truth = D.exact_neighbours(base, queries, K)
        else:
            base, queries, truth = ds.base, ds.queries[:2000], ds.gt[:2000]
        n, dim = base.shape

        def blocks():
            for start in range(0, n, 100_000):
                yield np.arange(start, min(n, start + 100_000)), base[start:start + 100_000]

        def sample(count):
            return base[np.sort(np.random.default_rng(0).choice(n, size=min(count, n), replace=False))]

        for spec in specs:
            vindex = vx.VectorIndex.build(spec, dim, n, blocks, sample=sample)
            nlist = int(vindex._ivf.nlist)
            curve = {}
            for nprobe in sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, vx.default_nprobe(nlist)}):
                if nprobe > nlist:
                    continue
                vindex.params.update(nprobe=nprobe)
                depth = int(vindex.params["rerank"]) if vindex.lossy else 1
                _, ids = vindex.search(queries, K, candidates=K * depth)
                if vindex.lossy:  # exact re-ranking, as the engine does from the store
                    scores = np.einsum("qcd,qd->qc", base[np.maximum(ids, 0)], queries)
                    scores[ids < 0] = -np.inf
                    ids = np.take_along_axis(ids, np.argsort(-scores, axis=1)[:, :K], axis=1)
                curve[nprobe] = round(D.recall_at(ids, truth), 4)
            default = vx.default_nprobe(nlist)
            row = {"data": name, "n": n, "dim": dim, "factory": vindex.factory, "nlist": nlist,
                   "recall_at_32": curve.get(32), "default_nprobe": default, "recall_at_default": curve[default],
                   "curve": curve}
            rows.append(row)
            print(f"  {name} {vindex.factory}: nprobe 32 -> {curve.get(32)}, default {default} -> "
                  f"{curve[default]}; curve {curve}", flush=True)
    worst = min(r["recall_at_default"] for r in rows)
    print(f"target: recall@10 >= ~0.9 at the default nprobe across list counts: worst {worst:.3f} "
          f"({'met' if worst >= 0.895 else 'NOT met'})")
    return {"rows": rows, "worst_at_default": worst}


def part_growth(n_max: int, workdir: Path, *, start: int = 10_000, step: float = 1.1, old_policy: bool = False,
                target: float = 0.95, queries: int = 2000) -> dict:
    from latent.indexer import Index
    from latent.indexer import tuning as T

    ds = D.glove_angular()
    n_max = min(n_max, len(ds.base))
    qs = ds.queries[:queries]
    base = ds.base[np.random.default_rng(5).permutation(len(ds.base))]
    patches = [mock.patch.object(T, "CHECK_GROWTH", float("inf")), mock.patch.object(T, "RETUNE_GROWTH", 2.0)] \
        if old_policy else []
    for p in patches:
        p.start()
    try:
        index = Index.create(workdir / "grow", encoder="glove", index_type="hnsw", target_recall=target)
        rows, n, positions, total_tuning = [], 0, {}, 0.0
        sizes = [start]
        while sizes[-1] < n_max:
            sizes.append(min(n_max, int(round(sizes[-1] * step))))
        for size in sizes:
            keys = [str(i) for i in range(n, size)]
            before = index.manifest.get("tuning") or {}
            done = clock()
            index.add_vectors(keys, base[n:size])
            wall, _, _ = done()
            positions.update(positions_of(index, keys))
            n = size
            record = index.manifest["tuning"]
            retuned = record.get("at") != before.get("at")
            checked = (record.get("probe") or {}).get("last")
            spent = (record.get("seconds", 0) if retuned else 0) + \
                (checked["seconds"] if checked and checked != (before.get("probe") or {}).get("last") else 0)
            total_tuning += spent
            truth = D.exact_neighbours(base[:n], qs, K)
            got = engine_recall(index, qs, truth, positions)
            row = {"n": n, "recall": round(got, 4), "efSearch": int(index.params["efSearch"]),
                   "event": "tuned" if retuned else "checked" if checked and spent else "-",
                   "add_s": round(wall, 2), "tuning_s": round(spent, 2)}
            rows.append(row)
            print(f"  {n:>8,}: recall {got:.4f} efSearch {row['efSearch']:>4} {row['event']:<8} "
                  f"write {wall:6.1f} s, of which tuning/check {spent:5.2f} s", flush=True)
        index.close()
    finally:
        for p in patches:
            p.stop()
    worst = min(rows, key=lambda r: r["recall"])
    add_total = sum(r["add_s"] for r in rows)
    print(f"target: recall never below {target} while growing in 10% batches ({len(rows)} sizes, "
          f"{start:,}..{n_max:,}{', old policy' if old_policy else ''}): lowest {worst['recall']:.4f} at "
          f"{worst['n']:,} ({'met' if worst['recall'] >= target else 'NOT met'}); tuning and checks took "
          f"{total_tuning:.1f} s of {add_total:.1f} s of writes")
    return {"rows": rows, "lowest": worst, "tuning_s": round(total_tuning, 2), "writes_s": round(add_total, 2),
            "old_policy": old_policy, "target": target, "queries": queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--glove", type=int, default=390_000, help="GloVe words in the build part")
    parser.add_argument("--hnsw384", type=int, default=200_000, help="384-d vectors in the HNSW threads part")
    parser.add_argument("--ivfpq", type=int, default=2_000_000, help="64-d vectors in the IVF-PQ part")
    parser.add_argument("--nprobe-sizes", type=int, nargs="+", default=[100_000],
                        help="clustered 64-d sizes of the nprobe part")
    parser.add_argument("--nprobe-glove-lists", type=int, nargs="*", default=[256, 1024, 4096],
                        help="list counts forced on GloVe in the nprobe part (besides the engine's own)")
    parser.add_argument("--growth", type=int, default=390_000, help="the largest size of the growth part")
    parser.add_argument("--old-policy", action="store_true", help="growth: re-tune at each doubling, no checks")
    parser.add_argument("--quick", action="store_true", help="small sizes; nothing recorded")
    args = parser.parse_args()
    if args.quick:
        args.glove, args.hnsw384, args.ivfpq, args.nprobe_sizes, args.growth = 30_000, 20_000, 100_000, [50_000], 30_000
        args.nprobe_glove_lists = []
    env = D.environment()
    print(f"environment: {env}; load average {os.getloadavg()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        for part in args.parts:
            print(f"\n== {part}", flush=True)
            if part == "glove":
                record = part_glove(args.glove, workdir)
            elif part == "hnsw384":
                record = part_hnsw384(args.hnsw384, workdir)
            elif part == "ivfpq":
                record = part_ivfpq(args.ivfpq, workdir)
            elif part == "nprobe":
                record = part_nprobe(args.nprobe_sizes, args.nprobe_glove_lists)
            else:
                record = part_growth(args.growth, workdir, old_policy=args.old_policy)
            if not args.quick:
                D.append_result("build", {"part": part, **record, "load_average": os.getloadavg(), "env": env})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
