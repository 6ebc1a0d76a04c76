"""Scale: how build time, memory and disk grow with the item count, per index type, through the
Python API (`Index.create`, `Index.add_vectors`, `search_vectors`), and what that says about
the index-type rule of `--index auto`.

- 384-d series: N in --sizes (default 10k 30k 100k 300k 1M) for each of --types (default flat
  hnsw ivfpq). Vectors: the real MiniLM embeddings of GloVe words (`bench_data.minilm_words()`,
  110,000 of them) while N <= 110,000, `bench_data.synthetic_384(N)` beyond; encoder "minilm"
  (--encoder-384; `Index.create` loads the model, so the RSS after create is shown apart).
- 64-d series: N in --big-sizes (default 1M 10M), ivfpq only, clustered synthetic vectors
  (`bench_data.clustered_64`, generated 1M rows at a time), encoder "vectors:64" (no model).
  --skip-big skips it.

Every (type, N) point is built in a fresh directory by a child process (this script with --one),
so that memory is per build: peak RSS during the build (VmHWM, reset once `Index.create` has
returned; getrusage's ru_maxrss is kept in the JSON only: Linux carries it across exec, so a
child's starts at its parent's peak), anonymous RSS (RssAnon) after the build, and the RSS
before and after `Index.create` ("base"; with minilm that holds the model). The vectors are
written to a raw file first and the child reads them 50,000 at a time, holding one batch beyond
what the engine holds. Build = `add_vectors` in batches of 50,000 (keys v0, v1, ...) with the
engine's defaults (DEFAULT_PARAMS in indexer/vector_index.py); its time is that of all the
add_vectors calls, split into the store (SQLite write_batch), FAISS adds, FAISS training (IVF
types train in the rebuild that follows the add_vectors call whose count passes their
threshold, so the list count is chosen then and kept as N grows), the rest of rebuilds, the
saves of vectors.faiss (one per add_vectors call), and the rest. Disk: latent.db (+ -wal, -shm)
and vectors.faiss after close. Queries: 200 held-out vectors, one at a time through
`search_vectors(index, q, k=10)`: p50 latency, and recall@10 against exact inner-product
neighbours (computed blockwise with FAISS IndexFlatIP after the build).

Printed: one row per point, the growth of build time with N (log-log slope) and faiss bytes per
vector per type, the target "IVF-PQ (exact re-ranking) >= 8x smaller than flat (vectors.faiss)
at recall@10 >= 0.95" (MET / NOT MET at the largest N both were built at), the rule `auto`
follows, and the N at which flat's single-query p50 crosses 5 ms in 384-d (log-log
interpolation): the evidence for auto's flat threshold. No timed assertions. One JSON line per
point plus a summary line go to benchmarks/results/scale.jsonl (not with --quick).

    python benchmarks/bench_scale.py [--sizes 10000 30000 ...] [--types flat hnsw ivfpq]
        [--big-sizes "1000000 10000000"] [--skip-big] [--workdir DIR] [--keep] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from bench_data import append_result, clustered_64, environment, minilm_words, recall_at, synthetic_384  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BATCH = 250_000  # vectors per add_vectors call (each call ends with a save of vectors.faiss)
N_QUERIES = 200
K = 10
REAL_MAX = 110_000  # minilm_words().base holds this many real vectors
BLOCK_64 = 1_000_000  # clustered_64 makes its rows 1M at a time
QUERY_START_64 = 10**9  # 64-d queries: rows far beyond any indexed N
SYNTH_QUERY_SEED = 7  # synthetic 384-d queries: another seed than the indexed rows (seed 1)
P50_LIMIT_MS = 5.0
SHRINK_TARGET, RECALL_TARGET = 8.0, 0.95


# -- the child: one build ---------------------------------------------------------------------------
def proc_status() -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in MiB."""
    out = {}
    try:
        for line in open("/proc/self/status"):
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def memory() -> dict:
    """proc_status() plus getrusage's ru_maxrss (MiB). Use VmHWM for the peak: Linux carries ru_maxrss
    across exec, so in a child started by subprocess it starts at least at the parent's own peak."""
    import resource

    return {**proc_status(), "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: "5" into /proc/self/clear_refs); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Phases:
    """Exclusive wall time per named phase of wrapped calls (a nested wrapped call counts for itself only)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stack: list[float] = []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                nested = self._stack.pop()
                elapsed = time.perf_counter() - started
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - nested
                if self._stack:
                    self._stack[-1] += elapsed
        return timed


def read_batches(path: str, dim: int, n: int, batch: int = BATCH):
    """(start, vectors) of rows 0..n of a raw float32 file, `batch` rows at a time (no memory map:
    file pages read through a mapping would count in this process's RSS)."""
    with open(path, "rb") as f:
        for start in range(0, n, batch):
            m = min(batch, n - start)
            rows = np.fromfile(f, dtype=np.float32, count=m * dim)
            if len(rows) != m * dim:
                raise SystemExit(f"{path} holds fewer than {n} rows of {dim} floats")
            yield start, rows.reshape(m, dim)


def exact_top(path: str, dim: int, n: int, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Row indices of the exact k nearest (inner product) of each query, blockwise (bounded memory)."""
    import faiss

    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start, block in read_batches(path, dim, n):
        flat = faiss.IndexFlatIP(dim)
        flat.add(block)
        s, i = flat.search(queries, min(k, len(block)))
        best_s, best_i = np.hstack([best_s, s]), np.hstack([best_i, i + start])
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def make_encoder(name: str, dim: int):
    """The encoder name if the engine knows it; else (a `vectors:<dim>` name on an engine without
    that encoder) an Encoder instance of that name and dim, which `Index.create` also takes."""
    from latent.indexer.encoders import Encoder, get_encoder
    from latent.indexer.errors import EncoderUnavailable

    if not name.startswith("vectors:"):
        return name, "name"
    try:
        get_encoder(name)
        return name, "name"
    except EncoderUnavailable:
        class Precomputed(Encoder):
            modalities = ()

        enc = Precomputed()
        enc.name, enc.dim = name, dim
        return enc, "Encoder instance (the engine has no such name)"


def one(spec: dict) -> dict:
    """Build one index in a fresh directory and measure it; runs in the child process."""
    started = time.perf_counter()
    import faiss

    from latent.indexer import Index
    from latent.indexer import vector_index as vx
    from latent.search import search_vectors

    dim, n, kind = spec["dim"], spec["n"], spec["type"]
    out: dict = {"mem_before_create": memory()}
    encoder, via = make_encoder(spec["encoder"], dim)
    out["encoder"], out["encoder_via"] = spec["encoder"], via
    t = time.perf_counter()
    index = Index.create(spec["index_dir"], encoder=encoder, index_type=kind)
    out["create_s"] = time.perf_counter() - t
    out["mem_after_create"] = memory()
    out["build_peak_since"] = "Index.create returned" if reset_peak() else "the child started"

    phases = Phases()
    index.store.write_batch = phases.wrap("store", index.store.write_batch)
    index._build_vectors = phases.wrap("rebuild", index._build_vectors)
    index._save_vectors = phases.wrap("save", index._save_vectors)
    vx.VectorIndex.add = phases.wrap("index_add", vx.VectorIndex.add)
    for name in ("IndexIVFPQ", "IndexIVFFlat", "IndexIVFScalarQuantizer", "IndexPQ"):  # training, within rebuilds
        cls = getattr(faiss, name, None)
        if cls is not None:
            cls.train = phases.wrap("train", cls.train)
    build_s, last_note, factories = 0.0, time.perf_counter(), []
    for start, vectors in read_batches(spec["data"], dim, n):
        keys = [f"v{i}" for i in range(start, start + len(vectors))]
        t = time.perf_counter()
        index.add_vectors(keys, vectors)
        build_s += time.perf_counter() - t
        factory = index.vectors.factory
        if not factories or factories[-1][1] != factory:
            factories.append((start + len(vectors), factory))
        if time.perf_counter() - last_note > 15:
            last_note = time.perf_counter()
            print(f"    {kind} {dim}-d {n:,}: {start + len(vectors):,} added ({build_s:.0f} s in add_vectors, "
                  f"{factory}, RSS {proc_status().get('VmRSS', 0):,.0f} MiB)", file=sys.stderr, flush=True)
        del vectors
    out["build_s"] = build_s
    out["phases_s"] = {**phases.seconds, "other": build_s - sum(phases.seconds.values())}
    out["mem_after_build"] = memory()
    vindex = index.vectors
    out["factory"], out["factory_history"], out["ntotal"] = vindex.factory, factories, vindex.ntotal
    out["count"] = index.count()

    queries = np.fromfile(spec["queries"], dtype=np.float32).reshape(-1, dim)
    t = time.perf_counter()
    gt = exact_top(spec["data"], dim, n, queries)
    out["ground_truth_s"] = time.perf_counter() - t

    def measure() -> tuple[list[float], float]:
        for q in queries[:5]:  # warm-up, not timed
            search_vectors(index, q, k=K)
        latencies, found = [], np.full((len(queries), K), -1, dtype=np.int64)
        for row, q in enumerate(queries):
            t = time.perf_counter()
            hits = search_vectors(index, q, k=K)[0]
            latencies.append(time.perf_counter() - t)
            rows = [int(h.key[1:]) for h in hits]
            found[row, :len(rows)] = rows
        return latencies, recall_at(found, gt, K)

    latencies, out["recall_at_10"] = measure()
    out["p50_ms"] = float(np.percentile(latencies, 50) * 1000)
    out["p95_ms"] = float(np.percentile(latencies, 95) * 1000)
    if vindex.lossy:  # compressed codes: the cheapest (nprobe, re-ranking depth) reaching recall 0.95
        sweep = []
        for nprobe in (16, 32, 64, 128, 256):
            for depth in (10, 20, 40):
                vindex.params.update(nprobe=nprobe, rerank=depth)
                lat, got = measure()
                sweep.append({"nprobe": nprobe, "rerank": depth, "recall_at_10": got,
                              "p50_ms": float(np.percentile(lat, 50) * 1000)})
        out["sweep"] = sweep
        reached = [p for p in sweep if p["recall_at_10"] >= RECALL_TARGET]
        out["at_recall_target"] = min(reached, key=lambda p: p["p50_ms"]) if reached else None
    index.close()

    directory = Path(spec["index_dir"])
    size = {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()}
    out["files"] = size
    out["db_bytes"] = sum(v for k, v in size.items() if k.startswith("latent.db"))
    out["faiss_bytes"] = size.get(vx.FILE_NAME, 0)
    out["mem_end"] = memory()
    out["child_s"] = time.perf_counter() - started
    return out


# -- the parent: data, children, tables --------------------------------------------------------------
def prepare_384(n: int, folder: Path) -> tuple[Path, Path, str]:
    """Raw float32 files of the n indexed vectors and the 200 queries; what they are."""
    folder.mkdir(parents=True, exist_ok=True)
    data, queries = folder / "base.f32", folder / "queries.f32"
    if n <= REAL_MAX:
        ds = minilm_words()
        if n > len(ds.base):
            raise SystemExit(f"minilm_words() holds {len(ds.base):,} vectors, not {n:,}")
        ds.base[:n].tofile(data)
        ds.queries[:N_QUERIES].tofile(queries)
        source = f"real MiniLM (minilm_words().base[:{n}], queries[:{N_QUERIES}])"
    else:
        synthetic_384(n).tofile(data)
        synthetic_384(N_QUERIES, seed=SYNTH_QUERY_SEED).tofile(queries)
        source = f"synthetic_384({n}) (queries: synthetic_384({N_QUERIES}, seed={SYNTH_QUERY_SEED}))"
    return data, queries, source


def prepare_64(n: int, folder: Path) -> tuple[Path, Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    data, queries = folder / "base.f32", folder / "queries.f32"
    with open(data, "wb") as f:
        for start in range(0, n, BLOCK_64):  # one 1M block at a time
            clustered_64(min(BLOCK_64, n - start), start).tofile(f)
    clustered_64(N_QUERIES, QUERY_START_64).tofile(queries)
    source = f"clustered_64 rows 0..{n} (queries: rows from {QUERY_START_64:,})"
    return data, queries, source


def run_point(kind: str, n: int, dim: int, encoder: str, data: Path, queries: Path, source: str,
              root: Path, keep: bool) -> dict:
    point = Path(tempfile.mkdtemp(dir=root, prefix=f"{kind}-{dim}d-{n}-"))
    spec = {"type": kind, "n": n, "dim": dim, "encoder": encoder, "data": str(data), "queries": str(queries),
            "index_dir": str(point / "index"), "result": str(point / "result.json")}
    record = {"type": kind, "n": n, "dim": dim, "source": source}
    print(f"  {kind} {dim}-d N={n:,} in {point} ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)], cwd=ROOT)
        result = Path(spec["result"])
        if proc.returncode == 0 and result.exists():
            record.update(json.loads(result.read_text()))
        else:
            why = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
            record["error"] = f"child exited {proc.returncode}{why}"
    finally:
        if not keep:
            shutil.rmtree(point, ignore_errors=True)
    return record


def point_line(r: dict) -> str:
    head = f"  {r['type']} {r['dim']}-d N={r['n']:,}: "
    if "error" in r:
        return head + r["error"]
    ph = r["phases_s"]
    index_s = ph.get("index_add", 0) + ph.get("train", 0) + ph.get("rebuild", 0)
    return (head + f"build {r['build_s']:.1f} s (store {ph.get('store', 0):.1f}, index {index_s:.1f} of which "
            f"training {ph.get('train', 0):.1f}, save {ph.get('save', 0):.1f}), {r['factory']}, "
            f"peak RSS {r['mem_after_build'].get('VmHWM', 0):,.0f} MiB, p50 {r['p50_ms']:.2f} ms, "
            f"recall@10 {r['recall_at_10']:.3f}")


def row_cells(r: dict) -> list[str]:
    if "error" in r:
        return [r["type"], f"{r['n']:,}", str(r["dim"]), r["error"]]
    mem, base = r["mem_after_build"], r["mem_after_create"]
    return [r["type"], f"{r['n']:,}", str(r["dim"]), f"{r['build_s']:.1f}", f"{r['n'] / r['build_s']:,.0f}",
            f"{mem.get('VmHWM', 0):,.0f}", f"{mem.get('RssAnon', 0):,.0f}", f"{base.get('VmRSS', 0):,.0f}",
            f"{r['db_bytes'] / 2**20:,.1f}", f"{r['faiss_bytes'] / 2**20:,.1f}", f"{r['faiss_bytes'] / r['n']:,.0f}",
            f"{r['p50_ms']:.2f}", f"{r['recall_at_10']:.3f}", r["factory"]]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    cells = [row if len(row) == len(header) else row[:-1] for row in rows]  # an error row's message spans
    widths = [max([len(h), *(len(row[i]) for row in cells if i < len(row))]) for i, h in enumerate(header)]
    print(" | ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        if len(row) < len(header):  # an error row: the message spans the rest
            print(" | ".join(c.rjust(w) for c, w in zip(row[:-1], widths)) + " | " + row[-1])
        else:
            print(" | ".join(c.rjust(w) for c, w in zip(row, widths)))


def slope(x1: float, y1: float, x2: float, y2: float) -> float | None:
    if min(x1, y1, x2, y2) <= 0 or x1 == x2:
        return None
    return math.log(y2 / y1) / math.log(x2 / x1)


def family(factory: str) -> str:
    """A factory string without its IVF list count (which grows with N)."""
    return re.sub(r"IVF\d+", "IVF<nlist>", factory)


def auto_rule(dims: list[int]) -> dict:
    """The constants of `auto` and, per dim, its stages: the factory family it picks and the largest N
    at which it still does (found on a grid of N up to 10**11, each switch pinned down by bisection)."""
    from latent.indexer import vector_index as vx

    rule: dict = {"constants": {k: getattr(vx, k) for k in dir(vx) if k.startswith("AUTO_")}, "stages": {}}
    grid = sorted({int(round(10 ** (e / 40))) for e in range(0, 40 * 11 + 1)})  # about 6% apart
    for dim in dims:
        try:
            def pick(n: int, dim: int = dim) -> str:
                return vx.target_factory("auto", n, dim)

            stages, prev_n, prev = [], grid[0], family(pick(grid[0]))
            first = pick(grid[0])
            for n in grid[1:]:
                current = family(pick(n))
                if current != prev:
                    lo, hi = prev_n, n
                    while hi - lo > 1:
                        mid = (lo + hi) // 2
                        lo, hi = (mid, hi) if family(pick(mid)) == prev else (lo, mid)
                    stages.append({"family": prev, "first": first, "up_to_n": lo})
                    prev, first = family(pick(hi)), pick(hi)
                prev_n = n
            stages.append({"family": prev, "first": first, "up_to_n": None})
            rule["stages"][dim] = stages
        except Exception as e:  # the rule changed shape: say so rather than fail after a long run
            rule["stages"][dim] = [{"error": f"{type(e).__name__}: {e}"}]
    return rule


def loglog_at(points: list[tuple[float, float]], y: float) -> tuple[float | None, str]:
    """x where the log-log line through sorted (x, y) points reaches y: interpolated between the pair
    that brackets it, else extrapolated from the nearest two (said so)."""
    points = sorted(p for p in points if p[0] > 0 and p[1] > 0)
    if len(points) < 2:
        return None, "needs two points"
    for (x1, y1), (x2, y2) in zip(points, points[1:]):
        if min(y1, y2) <= y <= max(y1, y2) and y1 != y2:
            return math.exp(math.log(x1) + (math.log(y) - math.log(y1)) * math.log(x2 / x1) / math.log(y2 / y1)), \
                "interpolated"
    (x1, y1), (x2, y2) = points[-2:] if y > points[-1][1] else points[:2]
    if y1 == y2 or (y2 - y1) * (x2 - x1) <= 0:
        return None, "latency does not grow with N over the measured range"
    x = math.exp(math.log(x1) + (math.log(y) - math.log(y1)) * math.log(x2 / x1) / math.log(y2 / y1))
    return x, "extrapolated beyond the measured range"


def y_at(points: list[tuple[float, float]], x: float) -> float | None:
    """y of the log-log line through the sorted points at x (interpolated, or extrapolated from the end pair)."""
    points = sorted(p for p in points if p[0] > 0 and p[1] > 0)
    if len(points) < 2:
        return None
    pair = next(((a, b) for a, b in zip(points, points[1:]) if a[0] <= x <= b[0]),
                points[:2] if x < points[0][0] else points[-2:])
    (x1, y1), (x2, y2) = pair
    return math.exp(math.log(y1) + math.log(x / x1) * math.log(y2 / y1) / math.log(x2 / x1))


def summarise(records: list[dict], rule: dict) -> dict:
    ok = [r for r in records if "error" not in r]
    summary: dict = {"growth": {}, "shrink_checks": [], "auto_rule": rule}
    print("\ngrowth (log-log slope between the smallest and largest N of each series):")
    for (kind, dim) in sorted({(r["type"], r["dim"]) for r in ok}, key=lambda x: (-x[1], x[0])):
        series = sorted((r for r in ok if r["type"] == kind and r["dim"] == dim), key=lambda r: r["n"])
        a, b = series[0], series[-1]
        g = {"n_from": a["n"], "n_to": b["n"], "build_exponent": slope(a["n"], a["build_s"], b["n"], b["build_s"]),
             "faiss_bytes_per_vector": b["faiss_bytes"] / b["n"], "db_bytes_per_vector": b["db_bytes"] / b["n"],
             "peak_rss_exponent": slope(a["n"], a["mem_after_build"].get("VmHWM", 0), b["n"],
                                       b["mem_after_build"].get("VmHWM", 0)),
             "p50_exponent": slope(a["n"], a["p50_ms"], b["n"], b["p50_ms"])}
        summary["growth"][f"{kind}-{dim}"] = g
        if len(series) < 2 or g["build_exponent"] is None:
            growth = "growth n/a (one point)"
        else:
            growth = f"build time ~ N^{g['build_exponent']:.2f} ({a['n']:,} -> {b['n']:,})"
            if g["p50_exponent"] is not None:
                growth += f", p50 ~ N^{g['p50_exponent']:.2f}"
        print(f"  {kind:>6} {dim:>3}-d: {growth}; at N={b['n']:,}: "
              f"faiss {g['faiss_bytes_per_vector']:,.0f} B/vector, latent.db {g['db_bytes_per_vector']:,.0f} B/vector")

    print(f"\ntarget: IVF-PQ (exact re-ranking) >= {SHRINK_TARGET:g}x smaller than flat (vectors.faiss) at "
          f"recall@10 >= {RECALL_TARGET}:")
    for dim in sorted({r["dim"] for r in ok}, reverse=True):
        flat = {r["n"]: r for r in ok if r["dim"] == dim and r["type"] == "flat"}
        pq = {r["n"]: r for r in ok if r["dim"] == dim and r["type"] == "ivfpq"}
        common = sorted(set(flat) & set(pq))
        if not common:
            print(f"  {dim}-d: no N with both flat and ivfpq built")
            continue
        n = common[-1]
        ratio = flat[n]["faiss_bytes"] / pq[n]["faiss_bytes"]
        best = pq[n].get("at_recall_target")  # the cheapest searched setting reaching the recall target
        recall = best["recall_at_10"] if best else pq[n]["recall_at_10"]
        if best:
            print(f"  {dim}-d ivfpq at N={n:,} reaches recall@10 {recall:.3f} with nprobe {best['nprobe']}, "
                  f"re-ranking depth {best['rerank']} (p50 {best['p50_ms']:.2f} ms)")
        met = ratio >= SHRINK_TARGET and recall >= RECALL_TARGET
        check = {"dim": dim, "n": n, "flat_faiss_bytes": flat[n]["faiss_bytes"],
                 "ivfpq_faiss_bytes": pq[n]["faiss_bytes"], "ratio": ratio, "ivfpq_recall_at_10": recall,
                 "ivfpq_factory": pq[n]["factory"], "met": met}
        summary["shrink_checks"].append(check)
        print(f"  {dim}-d, N={n:,}: flat {flat[n]['faiss_bytes'] / 2**20:,.1f} MiB / ivfpq ({pq[n]['factory']}) "
              f"{pq[n]['faiss_bytes'] / 2**20:,.1f} MiB = {ratio:.1f}x, ivfpq recall@10 {recall:.3f}: "
              f"{'MET' if met else 'NOT MET'}")

    print("\nthe rule of --index auto (indexer/vector_index.py target_factory):")
    print(f"  constants: {', '.join(f'{k} = {v:,}' for k, v in rule['constants'].items()) or 'none named AUTO_*'}")
    for dim, stages in rule["stages"].items():
        if "error" in stages[0]:
            print(f"  {dim}-d: could not evaluate ({stages[0]['error']})")
            continue
        parts = [f"{st['family']} up to N = {st['up_to_n']:,}" if st["up_to_n"] is not None
                 else f"{st['family']} beyond" + (f" ({st['first']} at first)" if st["first"] != st["family"] else "")
                 for st in stages]
        print(f"  {dim}-d: " + "; ".join(parts))
    picks = sorted({(r["dim"], r["n"]) for r in ok}, key=lambda x: (-x[0], x[1]))
    if picks:
        print("  auto at the measured points: " + "; ".join(f"{d}-d N={n:,}: {target(n, d)}" for d, n in picks))

    flat384 = [(r["n"], r["p50_ms"]) for r in ok if r["type"] == "flat" and r["dim"] == 384]
    cross, how = loglog_at(flat384, P50_LIMIT_MS)
    summary["flat_384_p50_crosses_5ms_at_n"], summary["flat_384_crossing_how"] = cross, how
    print(f"\nflat 384-d single-query p50 vs N: "
          f"{', '.join(f'{n:,}: {p:.2f} ms' for n, p in sorted(flat384)) or 'not measured'}")
    if cross is None:
        print(f"  N at which it crosses {P50_LIMIT_MS:g} ms: unknown ({how})")
    else:
        print(f"  crosses {P50_LIMIT_MS:g} ms at N ~ {cross:,.0f} ({how}, log-log)")
    auto_n = next((st["up_to_n"] for st in rule["stages"].get(384, []) if st.get("family") == "Flat"), None)
    if auto_n and len(flat384) >= 2:
        at = y_at(flat384, auto_n)
        summary["flat_384_p50_at_auto_threshold_ms"] = at
        print(f"  at auto's flat limit (N = {auto_n:,}) flat's p50 is ~ {at:.2f} ms (log-log from the measured points)")
    return summary


def target(n: int, dim: int) -> str:
    from latent.indexer import vector_index as vx

    return vx.target_factory("auto", n, dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help="384-d item counts (default 10000 30000 100000 300000 "
                                                             "1000000; --quick 10000 30000)")
    parser.add_argument("--types", nargs="+", help="index types of the 384-d series (default flat hnsw ivfpq)")
    parser.add_argument("--big-sizes", help='64-d item counts, ivfpq (default "1000000 10000000"; --quick "200000")')
    parser.add_argument("--big", type=int, help="the largest 64-d N (default 10000000): added to --big-sizes, "
                                                 "larger ones dropped")
    parser.add_argument("--skip-big", action="store_true", help="skip the 64-d series")
    parser.add_argument("--encoder-384", default="minilm",
                        help='encoder name of the 384-d indexes (default minilm, which loads the model; '
                             '"vectors:384" loads none)')
    parser.add_argument("--workdir", help="where the temporary directories go (default: a new one in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the index directories and vector files")
    parser.add_argument("--quick", action="store_true", help="sizes 10000 30000, 64-d 200000 only; nothing appended")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        spec = json.loads(args.one)
        Path(spec["result"]).write_text(json.dumps(one(spec)))
        return

    sizes = args.sizes or ([10_000, 30_000] if args.quick else [10_000, 30_000, 100_000, 300_000, 1_000_000])
    types = args.types or ["flat", "hnsw", "ivfpq"]
    big_text = args.big_sizes or ("200000" if args.quick else "1000000 10000000")
    big_sizes = {int(float(x)) for x in big_text.replace(",", " ").split()}
    if args.big:  # the largest 64-d N: larger --big-sizes are dropped
        big_sizes = {n for n in big_sizes if n < args.big} | {args.big}
    big_sizes = sorted(big_sizes)
    if args.skip_big:
        big_sizes = []
    settings = {"sizes": sizes, "types": types, "big_sizes": big_sizes, "encoder_384": args.encoder_384,
                "batch": BATCH, "queries": N_QUERIES, "k": K, "quick": args.quick}
    print(f"settings: {json.dumps(settings)}")
    env = environment()
    print(f"environment: {json.dumps(env)}")
    from latent.indexer import vector_index as vx

    print(f"engine defaults: DEFAULT_PARAMS = {vx.DEFAULT_PARAMS}", flush=True)

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="latent-scale-", dir=args.workdir))
    records: list[dict] = []
    started = time.time()
    try:
        plan = [(384, n, types, args.encoder_384, prepare_384) for n in sizes]
        plan += [(64, n, ["ivfpq"], "vectors:64", prepare_64) for n in big_sizes]
        for dim, n, kinds, encoder, prepare in plan:
            folder = root / f"data-{dim}d-{n}"
            t = time.perf_counter()
            data, queries, source = prepare(n, folder)
            print(f"{dim}-d N={n:,}: vectors {source} ({time.perf_counter() - t:.1f} s to write)", flush=True)
            try:
                for kind in kinds:
                    record = run_point(kind, n, dim, encoder, data, queries, source, root, args.keep)
                    records.append(record)
                    print(point_line(record), flush=True)
                    if not args.quick:
                        append_result("scale", {"bench": "scale", "point": record, "settings": settings,
                                                "environment": env})
            finally:
                if not args.keep:
                    shutil.rmtree(folder, ignore_errors=True)

        print(f"\nvectors: 384-d real MiniLM while N <= {REAL_MAX:,}, synthetic_384(N) beyond; 64-d clustered_64. "
              f"Encoders: 384-d {args.encoder_384!r}, 64-d 'vectors:64'. Build = all add_vectors calls "
              f"({BATCH:,} a call); peak/anon RSS after the build, base = RSS after Index.create.\n")
        header = ["type", "N", "dim", "build s", "items/s", "peak RSS MiB", "anon MiB", "base MiB", "db MiB",
                  "faiss MiB", "B/vector faiss", "p50 query ms", "recall@10", "factory"]
        print_table(header, [row_cells(r) for r in records])
        ok = [r for r in records if "error" not in r]
        if ok:
            print("\nbuild time split (s): store = SQLite write_batch; index add = FAISS adds; train = FAISS "
                  "training; rebuild rest = the rest of rebuilds (reading the store); save = writes of vectors.faiss; "
                  "other = validation, hashing, lookups")
            split = [[r["type"], f"{r['n']:,}", str(r["dim"]), *(f"{r['phases_s'].get(p, 0):.1f}" for p in
                      ("store", "index_add", "train", "rebuild", "save", "other")), f"{r['create_s']:.1f}",
                      f"{r['mem_before_create'].get('VmRSS', 0):,.0f}", f"{r['mem_after_create'].get('VmRSS', 0):,.0f}",
                      f"{r['encoder_via'].split(' (')[0]}"] for r in ok]
            print_table(["type", "N", "dim", "store", "index add", "train", "rebuild rest", "save", "other", "create s",
                         "RSS before create", "after create", "encoder by"], split)
        summary = summarise(records, auto_rule([384, 64]))
        summary["seconds"] = time.time() - started
        if args.quick:
            print("\n--quick: nothing appended")
        else:
            path = append_result("scale", {"bench": "scale", "summary": summary, "settings": settings,
                                           "environment": env})
            print(f"\nappended to {path}")
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
