"""Recall@10 against queries/s: the engine through its Python API (a vector in, hits with keys
and metadata out) against raw FAISS with the same index and parameters, hnswlib and Chroma
(in-process persistent client), on two data sets built from bundled models (see bench_data.py):

- glove-50-angular-400k: 390,000 GloVe words, 10,000 held-out query words;
- minilm-384-words-120k: MiniLM embeddings of 110,000 GloVe words, 10,000 held-out queries.

Every system is HNSW with M=32 and efConstruction=200; efSearch is swept. Two modes: single
queries one at a time on one thread, and all queries in one batch on two threads. Recall is
checked against exact ground truth before any speed is printed. Each point is the median of
--repeat runs (systems interleaved), with min-max. The engine is also measured with its row
cache off (every hit's key and metadata read from SQLite), which is what a first pass costs.

The engine's automatic tuning is checked on the same queries: `Index.tune(R)` for R = 0.95
and 0.99 picks efSearch on held-out items; the real queries' recall must land in [R, R+0.03]
and its QPS be >= 0.9x the best hand-picked efSearch with at least that recall.

The engine's batch mode is `search_batch` (columnar Results: ids and scores arrays, the keys read
with their rows in one statement, `Results.keys()` called in the timed part); its single mode is
`search_vectors` (a list of `Hit`s with keys and metadata).

Targets (issue 15): engine QPS >= 0.95x raw FAISS at the same recall (the best QPS of each at a
recall@10 of at least 0.95, and of at least 0.99), single queries and batched; stretch goal: >= 1.0x
hnswlib at the same recall. Earlier: engine single-query QPS >= 4x Chroma's at recall@10 >= 0.95.

    python benchmarks/bench_ann.py [--datasets glove minilm] [--systems engine faiss hnswlib chroma]
                                   [--single-queries 2000] [--repeat 3] [--quick]
Results: benchmarks/results/ann.jsonl, plot benchmarks/results/ann.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data as D  # noqa: E402

M, EF_CONSTRUCTION, K = 32, 200, 10
EF_SWEEP = (10, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512)
TARGETS = (0.95, 0.99)


# -- systems -------------------------------------------------------------------------------------------
class Engine:
    name = "engine"

    def __init__(self, ds: D.Dataset, workdir: Path, encoder: str, rebuild: bool):
        from latent.indexer import Index

        directory = workdir / f"ann-{ds.name}-engine"
        if directory.exists() and not rebuild:
            self.index = Index.open(directory)
            if self.index.count() != len(ds.base):
                self.index.close()
                shutil.rmtree(directory)
        if not directory.exists():
            started = time.perf_counter()
            index = Index.create(directory, encoder=encoder, index_type="HNSW32",
                                 params={"efConstruction": EF_CONSTRUCTION}, target_recall=TARGETS[0])
            index.add_vectors(ds.keys, ds.base, metadata=[{"rank": i} for i in range(len(ds.keys))], texts=ds.keys)
            index.close()
            print(f"  engine built in {time.perf_counter() - started:.0f} s (HNSW32, efConstruction "
                  f"{EF_CONSTRUCTION}, tuned to {TARGETS[0]} on held-out items)", flush=True)
            self.index = Index.open(directory)
        self.vindex = self.index.vectors
        self.row_of = {key: i for i, key in enumerate(ds.keys)}
        from latent.search import search_batch, search_vectors

        self._search, self._batch = search_vectors, search_batch

    def set_ef(self, ef: int) -> None:
        self.vindex.params["efSearch"] = ef

    def single(self, q: np.ndarray):
        return self._search(self.index, q, k=K)[0]

    def batch(self, queries: np.ndarray):
        results = self._batch(self.index, queries, k=K)
        return results, results.keys()  # the keys, as a caller reads them

    def rows(self, results) -> np.ndarray:
        if isinstance(results, tuple):  # a batch: (Results, keys)
            return np.array([[self.row_of[key] if key is not None else -1 for key in row] for row in results[1]])
        return np.array([[self.row_of[h.key] for h in hits] + [-1] * (K - len(hits)) for hits in results])


class EngineNoRowCache(Engine):
    name = "engine, no row cache"

    def __init__(self, engine: Engine):
        self.__dict__.update(engine.__dict__)
        store = self.index.store
        self._plain = lambda ids, generation: store.rows(ids)

    def single(self, q: np.ndarray):
        store = self.index.store
        cached, store.cached_rows = store.cached_rows, self._plain
        try:
            return self._search(self.index, q, k=K)[0]
        finally:
            store.cached_rows = cached


class RawFaiss:
    name = "faiss"

    def __init__(self, ds: D.Dataset, workdir: Path, rebuild: bool):
        import faiss

        self.faiss = faiss
        path = workdir / f"ann-{ds.name}-faiss.index"
        if path.exists() and not rebuild:
            self.index = faiss.read_index(str(path))
        else:
            started = time.perf_counter()
            self.index = faiss.IndexHNSWFlat(ds.dim, M, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = EF_CONSTRUCTION
            self.index.add(ds.base)
            faiss.write_index(self.index, str(path))
            print(f"  faiss built in {time.perf_counter() - started:.0f} s", flush=True)
        self.params = faiss.SearchParametersHNSW(efSearch=16)

    def set_ef(self, ef: int) -> None:
        self.params = self.faiss.SearchParametersHNSW(efSearch=max(ef, K))

    def single(self, q: np.ndarray):
        return self.index.search(q[None, :], K, params=self.params)[1][0]

    def batch(self, queries: np.ndarray):
        return self.index.search(queries, K, params=self.params)[1]

    def rows(self, results) -> np.ndarray:
        return np.asarray(results).reshape(-1, K)


class Hnswlib:
    name = "hnswlib"

    def __init__(self, ds: D.Dataset, workdir: Path, rebuild: bool):
        import hnswlib

        path = workdir / f"ann-{ds.name}-hnswlib.bin"
        self.index = hnswlib.Index(space="ip", dim=ds.dim)
        if path.exists() and not rebuild:
            self.index.load_index(str(path), max_elements=len(ds.base))
        else:
            started = time.perf_counter()
            self.index.init_index(max_elements=len(ds.base), ef_construction=EF_CONSTRUCTION, M=M)
            self.index.add_items(ds.base, np.arange(len(ds.base)), num_threads=2)
            self.index.save_index(str(path))
            print(f"  hnswlib built in {time.perf_counter() - started:.0f} s", flush=True)
        self.threads = 1

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(max(ef, K))

    def single(self, q: np.ndarray):
        return self.index.knn_query(q, k=K, num_threads=1)[0][0]

    def batch(self, queries: np.ndarray):
        return self.index.knn_query(queries, k=K, num_threads=2)[0]

    def rows(self, results) -> np.ndarray:
        return np.asarray(results, dtype=np.int64).reshape(-1, K)


class Chroma:
    name = "chroma"

    def __init__(self, ds: D.Dataset, workdir: Path, rebuild: bool):
        import chromadb

        path = workdir / f"ann-{ds.name}-chroma"
        if rebuild and path.exists():
            shutil.rmtree(path)
        self.client = chromadb.PersistentClient(path=str(path))
        name = "ann"
        existing = [c.name for c in self.client.list_collections()]
        if name in existing and self.client.get_collection(name).count() == len(ds.base):
            self.collection = self.client.get_collection(name, embedding_function=None)
        else:
            if name in existing:
                self.client.delete_collection(name)
            started = time.perf_counter()
            self.collection = self.client.create_collection(
                name, embedding_function=None,
                configuration={"hnsw": {"space": "ip", "ef_construction": EF_CONSTRUCTION, "max_neighbors": M,
                                        "ef_search": 16, "num_threads": 2}})
            step = self.client.get_max_batch_size()
            for start in range(0, len(ds.base), step):
                stop = min(start + step, len(ds.base))
                self.collection.add(ids=ds.keys[start:stop], embeddings=ds.base[start:stop],
                                    metadatas=[{"rank": i} for i in range(start, stop)])
            print(f"  chroma built in {time.perf_counter() - started:.0f} s", flush=True)
        self.row_of = {key: i for i, key in enumerate(ds.keys)}
        self.path, self.ef, self.dim = path, None, ds.dim

    def set_ef(self, ef: int) -> None:
        """Chroma applies a new ef_search when the collection is next loaded: a loaded HNSW segment
        keeps its own (checked: recall did not move in-process), so the client is reopened."""
        import chromadb
        from chromadb.api.client import SharedSystemClient

        if ef == self.ef:
            return
        self.collection.modify(configuration={"hnsw": {"ef_search": max(ef, K)}})
        SharedSystemClient.clear_system_cache()
        self.client = chromadb.PersistentClient(path=str(self.path))
        self.collection = self.client.get_collection("ann", embedding_function=None)
        self.collection.query(query_embeddings=np.ones((1, self.dim), np.float32), n_results=K)  # load it untimed
        self.ef = ef

    def single(self, q: np.ndarray):
        return self.collection.query(query_embeddings=q[None, :], n_results=K, include=["metadatas", "distances"])

    def batch(self, queries: np.ndarray):
        out = []
        for start in range(0, len(queries), 1000):
            got = self.collection.query(query_embeddings=queries[start:start + 1000], n_results=K,
                                        include=["metadatas", "distances"])
            out += got["ids"]
        return out

    def rows(self, results) -> np.ndarray:
        if results and isinstance(results[0], dict):
            results = [r["ids"][0] for r in results]
        return np.array([[self.row_of[key] for key in ids] + [-1] * (K - len(ids)) for ids in results])


# -- measuring -----------------------------------------------------------------------------------------
def single_run(system, queries: np.ndarray) -> tuple[float, list]:
    started = time.perf_counter()
    results = [system.single(q) for q in queries]
    return len(queries) / (time.perf_counter() - started), results


def batch_run(system, queries: np.ndarray) -> tuple[float, list]:
    started = time.perf_counter()
    results = system.batch(queries)
    return len(queries) / (time.perf_counter() - started), results


def set_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


def sweep(systems: list, ds: D.Dataset, mode: str, efs, n_queries: int, repeat: int) -> list[dict]:
    queries, truth = ds.queries[:n_queries], ds.gt[:n_queries]
    run = single_run if mode == "single" else batch_run
    set_threads(1 if mode == "single" else 2)
    points = []
    for system in systems:  # warm-up: load pages, caches, lazy imports
        system.set_ef(efs[len(efs) // 2])
        run(system, queries[: min(200, len(queries))])
    for ef in efs:
        qps: dict[str, list[float]] = {s.name: [] for s in systems}
        recalls: dict[str, float] = {}
        for rep in range(repeat):
            for system in (systems if rep % 2 == 0 else systems[::-1]):
                system.set_ef(ef)
                speed, results = run(system, queries)
                qps[system.name].append(speed)
                if rep == 0:
                    recalls[system.name] = D.recall_at(system.rows(results), truth, K)
        for system in systems:
            values = qps[system.name]
            point = {"dataset": ds.name, "mode": mode, "system": system.name, "efSearch": ef,
                     "recall": round(recalls[system.name], 4), "qps": round(statistics.median(values), 1),
                     "qps_min": round(min(values), 1), "qps_max": round(max(values), 1), "queries": len(queries)}
            points.append(point)
        line = "  ".join(f"{s.name} {recalls[s.name]:.3f}/{statistics.median(qps[s.name]):,.0f}" for s in systems)
        print(f"  {mode:6s} ef {ef:4d}: {line}", flush=True)
    return points


def best_at(points: list[dict], system: str, mode: str, recall: float) -> dict | None:
    ok = [p for p in points if p["system"] == system and p["mode"] == mode and p["recall"] >= recall]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def ratio_at_same_ef(points, a: str, b: str, mode: str, min_recall: float) -> list[tuple[int, float]]:
    out = []
    for p in points:
        if p["system"] != a or p["mode"] != mode or p["recall"] < min_recall:
            continue
        other = next((o for o in points if o["system"] == b and o["mode"] == mode and o["efSearch"] == p["efSearch"]),
                     None)
        if other:
            out.append((p["efSearch"], p["qps"] / other["qps"]))
    return out


def compare_efs(engine: Engine, ds: D.Dataset, efs: list[int], n_queries: int, repeat: int) -> dict[int, dict]:
    """Single-query recall and QPS of the engine at a few efSearch values, interleaved."""
    queries, truth = ds.queries[:n_queries], ds.gt[:n_queries]
    set_threads(1)
    speeds: dict[int, list[float]] = {ef: [] for ef in efs}
    recalls: dict[int, float] = {}
    for rep in range(repeat):
        for ef in (efs if rep % 2 == 0 else efs[::-1]):
            engine.set_ef(ef)
            speed, results = single_run(engine, queries)
            speeds[ef].append(speed)
            recalls[ef] = D.recall_at(engine.rows(results), truth, K)
    return {ef: {"recall": round(recalls[ef], 4), "qps": round(statistics.median(speeds[ef]), 1)} for ef in efs}


def check_tuning(engine: Engine, ds: D.Dataset, points: list[dict], n_queries: int, repeat: int) -> list[dict]:
    """Tune the engine to each target on held-out items; measure on the real queries, against the
    best hand-picked efSearch of the sweep with at least the recall reached, interleaved."""
    out = []
    for target in TARGETS:
        started = time.perf_counter()
        record = engine.index.manifest.get("tuning") or {}
        if record.get("target_recall") != target or record.get("count") != engine.index.count():
            record = engine.index.tune(target)  # rebuilds the graph with a held-out sample
        seconds = time.perf_counter() - started
        engine.vindex = engine.index.vectors
        out.append(tuning_entry(engine, ds, points, target, record["params"]["efSearch"], n_queries, repeat,
                                held_out=record["recall"], goal=record["goal"], tune_seconds=round(seconds, 1),
                                measure_seconds=record["seconds"]))
    return out


def tuning_entry(engine, ds, points, target, ef, n_queries, repeat, **extra) -> dict:
    first = compare_efs(engine, ds, [ef], n_queries, 1)[ef]
    hand = best_at(points, "engine", "single", first["recall"])
    efs = [ef] + ([hand["efSearch"]] if hand and hand["efSearch"] != ef else [])
    measured = compare_efs(engine, ds, efs, n_queries, repeat)
    got, qps = measured[ef]["recall"], measured[ef]["qps"]
    hand_now = measured.get(hand["efSearch"]) if hand else None
    ratio = qps / hand_now["qps"] if hand_now else (1.0 if hand else None)
    entry = {"dataset": ds.name, "target": target, "efSearch": ef, **extra, "recall": got, "qps": qps,
             "in_window": target <= got <= target + 0.03,
             "best_hand_picked": hand and {"efSearch": hand["efSearch"], "sweep_recall": hand["recall"],
                                           **({"recall": hand_now["recall"], "qps": hand_now["qps"]} if hand_now
                                              else {"same_as_tuned": True})},
             "qps_ratio_to_hand_picked": round(ratio, 3) if ratio is not None else None}
    print(f"  tuned to {target}: efSearch {ef} ({extra}); real queries recall {got:.4f} "
          f"({'in' if entry['in_window'] else 'NOT in'} [{target}, {target + 0.03:.2f}]), {qps:,.0f} q/s; "
          f"best hand-picked with recall >= {first['recall']:.4f}: "
          + (f"ef {hand['efSearch']}, measured alongside: {hand_now['qps'] if hand_now else qps:,.0f} q/s, "
             f"ratio {ratio:.2f}" if hand else "none"), flush=True)
    return entry


def recheck_tuning(args) -> list[dict]:
    """Measure again, interleaved, the tuned and hand-picked settings of the last recorded run."""
    import json

    last = [json.loads(line) for line in (D.RESULTS / "ann.jsonl").read_text().splitlines()][-1]
    out = []
    for which in args.datasets:
        ds = D.glove_angular() if which == "glove" else D.minilm_words()
        engine = Engine(ds, D.cache_dir(), "glove" if which == "glove" else "minilm", False)
        points = [p for p in last["points"] if p["dataset"] == ds.name]
        for t in (t for t in last["tuning"] if t["dataset"] == ds.name):
            out.append(tuning_entry(engine, ds, points, t["target"], t["efSearch"], args.single_queries, args.repeat,
                                    held_out=t.get("held_out_recall"), goal=t.get("goal"), rechecked=True))
        engine.index.close()
    return out


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({p["dataset"] for p in points})
    modes = ["single", "batch"]
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 4.6 * len(names)), squeeze=False)
    colours = {"engine": "C0", "engine, no row cache": "C0", "faiss": "C1", "hnswlib": "C2", "chroma": "C3"}
    for r, name in enumerate(names):
        for c, mode in enumerate(modes):
            ax = axes[r][c]
            for system in dict.fromkeys(p["system"] for p in points):
                pts = sorted((p for p in points if p["dataset"] == name and p["mode"] == mode and p["system"] == system),
                             key=lambda p: p["efSearch"])
                if pts:
                    ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], marker="o", ms=3, label=system,
                            color=colours.get(system), ls="--" if "no row cache" in system else "-")
            ax.set_yscale("log")
            ax.set_xlim(left=0.8, right=1.0)
            ax.axvline(0.95, color="grey", lw=0.5)
            ax.axvline(0.99, color="grey", lw=0.5)
            ax.set_title(f"{name}: {'one query at a time, 1 thread' if mode == 'single' else 'batched, 2 threads'}")
            ax.set_xlabel("recall@10")
            ax.set_ylabel("queries/s")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["glove", "minilm"], choices=["glove", "minilm"])
    parser.add_argument("--systems", nargs="+", default=["engine", "faiss", "hnswlib", "chroma"],
                        choices=["engine", "faiss", "hnswlib", "chroma"])
    parser.add_argument("--single-queries", type=int, default=2000, help="queries in the one-at-a-time runs")
    parser.add_argument("--batch-queries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached indexes")
    parser.add_argument("--no-tuning", action="store_true", help="skip the automatic tuning check")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few points, nothing recorded")
    parser.add_argument("--merge-last", action="store_true",
                        help="carry the points of the systems not measured now over from the last recorded run")
    parser.add_argument("--recheck-tuning", action="store_true",
                        help="only measure again the tuned and hand-picked settings of the last recorded run")
    args = parser.parse_args()
    if args.recheck_tuning:
        tuned = recheck_tuning(args)
        D.append_result("ann_tuning", {"args": vars(args), "environment": D.environment(), "tuning": tuned})
        return
    efs = (16, 64, 256) if args.quick else EF_SWEEP
    if args.quick:
        args.single_queries, args.batch_queries, args.repeat = 300, 2000, 1
    env = D.environment()
    print(f"bench_ann: {vars(args)}\n{env}", flush=True)
    workdir = D.cache_dir()
    points, tuned = [], []
    for which in args.datasets:
        ds = D.glove_angular() if which == "glove" else D.minilm_words()
        print(f"\n== {ds} ==", flush=True)
        systems = []
        engine = None
        if "engine" in args.systems:
            engine = Engine(ds, workdir, "glove" if which == "glove" else "minilm", args.rebuild)
            systems.append(engine)
        if "faiss" in args.systems:
            systems.append(RawFaiss(ds, workdir, args.rebuild))
        if "hnswlib" in args.systems:
            systems.append(Hnswlib(ds, workdir, args.rebuild))
        if "chroma" in args.systems:
            systems.append(Chroma(ds, workdir, args.rebuild))
        singles = systems + ([EngineNoRowCache(engine)] if engine else [])
        points += sweep(singles, ds, "single", efs, args.single_queries, args.repeat)
        points += sweep(systems, ds, "batch", efs, args.batch_queries, args.repeat)
        if engine and not args.no_tuning:
            tuned += check_tuning(engine, ds, points, args.single_queries, args.repeat)
        if engine:
            engine.index.close()
    if args.merge_last:
        import json

        last = [json.loads(line) for line in (D.RESULTS / "ann.jsonl").read_text().splitlines()][-1]
        measured = {p["system"] for p in points}
        names = {p["dataset"] for p in points}
        points += [{**p, "carried_from": last["at"]} for p in last["points"]
                   if p["system"] not in measured and p["dataset"] in names]
        if not tuned:
            tuned = [t for t in last.get("tuning", []) if t["dataset"] in names]
    summary = report(points, tuned, args)
    if not args.quick:
        D.RESULTS.mkdir(exist_ok=True)
        plot(points, D.RESULTS / "ann.png")
        path = D.append_result("ann", {"args": vars(args), "environment": env, "points": points, "tuning": tuned,
                                       "summary": summary})
        print(f"\nappended to {path}; plot {D.RESULTS / 'ann.png'}")


def report(points: list[dict], tuned: list[dict], args) -> dict:
    summary: dict = {}
    print("\n== best queries/s at a recall@10 of at least ... ==")
    for name in dict.fromkeys(p["dataset"] for p in points):
        pts = [p for p in points if p["dataset"] == name]
        for mode in ("single", "batch"):
            print(f"{name}, {mode}:")
            for system in dict.fromkeys(p["system"] for p in pts if p["mode"] == mode):
                cells = []
                for r in TARGETS:
                    best = best_at(pts, system, mode, r)
                    summary[f"{name}|{mode}|{system}|{r}"] = best and {"qps": best["qps"], "efSearch": best["efSearch"],
                                                                     "recall": best["recall"]}
                    cells.append(f">= {r}: " + (f"{best['qps']:>9,.0f} q/s (ef {best['efSearch']}, "
                                                 f"recall {best['recall']:.3f})" if best else "not reached"))
                print(f"  {system:22s} " + "   ".join(cells))
            for other, target in (("faiss", 0.95), ("hnswlib", 1.0)):
                for r in TARGETS:
                    a, b = best_at(pts, "engine", mode, r), best_at(pts, other, mode, r)
                    if a and b:
                        ratio = a["qps"] / b["qps"]
                        same = [x for _, x in ratio_at_same_ef(pts, "engine", other, mode, r)]
                        summary[f"{name}|{mode}|engine/{other}|{r}"] = round(ratio, 3)
                        at_ef = (f"median {statistics.median(same):.2f} over {len(same)} settings" if same
                                 else "no common setting")
                        print(f"  RATIO engine/{other} at recall >= {r}, {mode}: {ratio:.2f} (best vs best); at the "
                              f"same efSearch: {at_ef}; target >= {target}"
                              f"{' (stretch)' if other == 'hnswlib' else ''}: {'MET' if ratio >= target else 'NOT MET'}")
            if mode == "single":
                a, b = best_at(pts, "engine", mode, 0.95), best_at(pts, "chroma", mode, 0.95)
                if a and b:
                    ratio = a["qps"] / b["qps"]
                    summary[f"{name}|single|engine/chroma|0.95"] = round(ratio, 2)
                    print(f"  engine/chroma at recall >= 0.95: {ratio:.1f}x; target >= 4x: "
                          f"{'MET' if ratio >= 4 else 'NOT MET'}")
                a, b = best_at(pts, "engine, no row cache", mode, 0.95), best_at(pts, "faiss", mode, 0.95)
                if a and b:
                    print(f"  engine with its row cache off / faiss at recall >= 0.95: {a['qps'] / b['qps']:.2f}")
    for t in tuned:
        print(f"tuning {t['dataset']} to {t['target']}: recall {t['recall']:.4f} "
              f"({'in' if t['in_window'] else 'NOT in'} the window), QPS ratio to the best hand-picked "
              f"{t['qps_ratio_to_hand_picked']} (target >= 0.9)")
    return summary


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
