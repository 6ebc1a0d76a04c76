"""Timings of `dupes` (near-duplicate groups) and `cluster` (k-means stored as a field) at scale.

Two collections:
- synthetic: N unit vectors of DIM dimensions around 50 centres (`vectors:DIM`, no model), of
  which 1% get one to three noisy copies (cosine about 0.98 to their original): the groups
  found at threshold 0.95 are checked against the planted ones before any time is printed;
- glove: the N most frequent GloVe words (50-d, real vectors), with --glove.

Each is measured end to end through the Python API (reading the stored vectors, the FAISS
range search or k-means, and for `cluster` writing the field in one transaction). Prints the
figures and appends a JSON line to benchmarks/results/tools.jsonl.

    python benchmarks/bench_tools.py [--n 100000] [--dim 384] [--k 20] [--glove]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".pkg"))
import faiss  # noqa: E402

import latent  # noqa: E402
from latent.indexer.encoders.glove import load_glove  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "tools.jsonl"


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[set[str]]]:
    """Keys, vectors and the planted groups of near-duplicates (original + copies)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    originals = n - n // 50  # about 1% of originals get 1-3 copies: ~2% of the items are copies
    base = centres[rng.integers(0, 50, originals)] + rng.standard_normal((originals, dim)).astype(np.float32) * 1.2
    keys = [f"v{i:07d}" for i in range(originals)]
    vectors = [base]
    groups = []
    copies_left = n - originals
    chosen = rng.choice(originals, size=copies_left, replace=False)
    i = 0
    while copies_left > 0:
        m = min(int(rng.integers(1, 4)), copies_left)
        original = int(chosen[i])
        i += 1
        unit = base[original] / np.linalg.norm(base[original])
        noise = rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim) * 0.2
        vectors.append(unit + noise)
        new = [f"{keys[original]}-copy{j}" for j in range(m)]
        keys.extend(new)
        groups.append({keys[original], *new})
        copies_left -= m
    return keys, np.concatenate(vectors).astype(np.float32), groups


def timed(fn):
    """(result, wall seconds, CPU seconds of this process): on a shared machine the CPU time says
    what the work cost when the wall time mostly waited for a core."""
    started, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - started, time.process_time() - cpu


def measure_synthetic(tmp: Path, n: int, dim: int, k: int) -> dict:
    keys, vectors, planted = synthetic(n, dim)
    ix = latent.create(tmp / "synthetic", encoder=f"vectors:{dim}", index_type="flat")
    for start in range(0, n, 20_000):
        ix.add_vectors(keys[start:start + 20_000], vectors[start:start + 20_000])
    groups, dupes_s, dupes_cpu = timed(lambda: ix.duplicates(threshold=0.95))
    found = [{m.key for m in g.members} for g in groups]
    exact = sorted(map(sorted, found)) == sorted(map(sorted, planted))
    if not exact:
        raise SystemExit(f"dupes found {len(found)} groups, {len(planted)} were planted: not the same")
    clustering, cluster_s, cluster_cpu = timed(lambda: ix.cluster(k, field="cluster"))
    ix.close()
    return {"collection": "synthetic", "n": n, "dim": dim, "planted_groups": len(planted), "groups_exact": exact,
            "dupes_s": round(dupes_s, 2), "dupes_cpu_s": round(dupes_cpu, 2), "cluster_k": k,
            "cluster_s": round(cluster_s, 2), "cluster_cpu_s": round(cluster_cpu, 2),
            "kmeans_s": round(clustering.seconds_kmeans, 2)}


def measure_glove(tmp: Path, n: int, k: int) -> dict:
    words, _, table = load_glove()  # GloVe's words come most frequent first
    top, vectors = words[:n], np.asarray(table[:n], dtype=np.float32)
    ix = latent.create(tmp / "glove", encoder="vectors:50", index_type="flat")
    for start in range(0, len(top), 20_000):
        ix.add_vectors(top[start:start + 20_000], vectors[start:start + 20_000])
    groups, dupes_s, dupes_cpu = timed(lambda: ix.duplicates(threshold=0.95))
    clustering, cluster_s, cluster_cpu = timed(lambda: ix.cluster(k, field="cluster"))
    biggest = [m.key for m in groups[0].members[:8]] if groups else []
    ix.close()
    return {"collection": "glove", "n": len(top), "dim": 50, "groups": len(groups),
            "items_in_groups": sum(g.size for g in groups), "largest_group": biggest, "dupes_s": round(dupes_s, 2),
            "dupes_cpu_s": round(dupes_cpu, 2), "cluster_k": k, "cluster_s": round(cluster_s, 2),
            "cluster_cpu_s": round(cluster_cpu, 2), "kmeans_s": round(clustering.seconds_kmeans, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items per collection")
    parser.add_argument("--dim", type=int, default=384, help="dimension of the synthetic vectors")
    parser.add_argument("--k", type=int, default=20, help="clusters")
    parser.add_argument("--glove", action="store_true", help="also the N most frequent GloVe words")
    args = parser.parse_args()
    print(f"bench_tools: n={args.n:,} dim={args.dim} k={args.k}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads, load {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure_synthetic(Path(tmp), args.n, args.dim, args.k))
        print(json.dumps(rows[-1]), flush=True)
        if args.glove:
            rows.append(measure_glove(Path(tmp), args.n, args.k))
            print(json.dumps(rows[-1]), flush=True)
    record = {"bench": "tools", "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version(),
              "load_after": round(os.getloadavg()[0], 1), "results": rows}
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
