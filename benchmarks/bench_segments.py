"""Segmented vector files: what one write costs as the index grows, and what a cold process pays.

For each N in --sizes (default 10k 30k 100k 300k 1M) a child process (this script with --one)
creates an index of random unit 384-d vectors ("vectors:384", no model) of --type (default
flat: the bytes a write costs do not depend on the base's type, since a write never rewrites the
base), adds N of them with `add_vectors` in batches of 50,000 (segments, merging into the base
past the merge ratio, as any writer), then `compact` (the base holds all N) and:

- adds --adds (default 5) batches of 1,000 new vectors, each its own `add_vectors` call: per
  call the wall time (and CPU time), the bytes of vector files written (files new or changed in the directory)
  and the bytes the process wrote in all (/proc/self/io wchar: SQLite too). The whole-file
  design this replaced rewrote vectors.faiss on each call: its size is printed beside;
- peak RSS while adding the N (VmHWM after `Index.create`, minus the RSS before it) against
  the size of the vector files at the end;
- a cold `latent similar DIR --key v5 -k 10` process (no encoder: the stored vector is the
  query), whole-process wall time and CPU time, median of --cold-runs (default 3) runs after an
  untimed one, with bytecode cached as a user's install has it (bench_data.user_env); beside it the time
  to read the base fully (no memory map) in this process, which is what a load cost before.

Printed: one row per N, and the targets: adding 1,000 vectors to the largest index < 1 s; bytes
per add independent of N (ratio of the largest to the smallest N); a cold process <= 1 s; peak
RSS <= 1.5x the vector files. A PNG of bytes written per add against N goes to
benchmarks/results/segments_bytes.png (and, with --figure PATH, to PATH too); JSON lines to
benchmarks/results/segments.jsonl. Run big sizes once, under `nice`.

    python benchmarks/bench_segments.py [--sizes 10000 100000 ...] [--type flat|hnsw|auto] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from bench_data import RESULTS, append_result, environment, user_env  # noqa: E402

DIM = 384
BATCH = 50_000
ADD = 1_000


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def status() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def wchar() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("wchar"):
            return int(line.split()[1])
    return 0


def vector_files(directory: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in directory.iterdir() if p.name.startswith("vectors")}


def one(n: int, index_type: str, adds: int, directory: Path) -> dict:
    from latent.indexer import Index
    import latent.indexer.vector_index as vx

    base_rss = status()["VmRSS"]
    index = Index.create(directory, encoder="vectors:384", index_type=index_type)
    reset_peak()
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        index.add_vectors([f"v{i}" for i in range(start, start + count)], unit_vectors(count, start))
    add_seconds = time.perf_counter() - started
    peak = status()["VmHWM"] - base_rss
    started = time.perf_counter()
    index.compact()
    compact_seconds = time.perf_counter() - started
    files_bytes = sum(size for _, _, size in vector_files(directory).values())
    base_bytes = (directory / vx.FILE_NAME).stat().st_size
    per_add = []
    for a in range(adds):
        vectors = unit_vectors(ADD, 10**9 + a)
        before, io = vector_files(directory), wchar()
        started, cpu = time.perf_counter(), time.process_time()
        index.add_vectors([f"new{a}_{i}" for i in range(ADD)], vectors)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        after = vector_files(directory)
        written = sum(v[2] for name, v in after.items() if before.get(name) != v)
        per_add.append({"seconds": seconds, "cpu_seconds": cpu, "vector_bytes": written, "all_bytes": wchar() - io,
                        "segments": len(index.vectors.segments)})
    factory = index.vectors.factory
    index.close()
    started = time.perf_counter()
    vx.VectorIndex.load(directory)  # read fully: what every process did before memory-mapping
    full_read = time.perf_counter() - started
    return {"n": n, "type": index_type, "factory": factory, "add_seconds": add_seconds,
            "compact_seconds": compact_seconds, "peak_rss_mib": peak, "vector_files_mib": files_bytes / 2**20,
            "base_bytes": base_bytes, "adds": per_add, "full_read_seconds": full_read}


def cold(directory: Path, runs: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds, user + system) of a whole `latent similar` process,
    after one untimed run, with bytecode cached as a user's install has it (bench_data.user_env).
    The CPU time is shown because on a loaded machine the wall time mostly measures waiting."""
    import resource

    command = [sys.executable, "-c", "from latent.cli import main; main()", "similar", str(directory),
               "--key", "v5", "-k", "10"]
    env = user_env(HF_HUB_OFFLINE="1")
    subprocess.run(command, capture_output=True, env=env, check=True)  # untimed: bytecode, page cache
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        assert out.returncode == 0, out.stderr
    return statistics.median(times), statistics.median(cpu)


def plot(rows: list[dict], paths: list[Path]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(ns, [r["median_vector_bytes"] for r in rows], "o-", label="segments: vector files written per add")
    ax.loglog(ns, [r["median_all_bytes"] for r in rows], "s-", label="segments: all bytes written (SQLite too)")
    ax.loglog(ns, [r["base_bytes"] for r in rows], "x--", label="before: vectors.faiss rewritten per add")
    ax.set_xlabel("items in the index (N)")
    ax.set_ylabel("bytes written by one add of 1,000 vectors")
    ax.set_title("Bytes written per add (384-d)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 30_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--type", default="flat")
    parser.add_argument("--adds", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--figure", type=Path, help="also write the plot here (e.g. docs/img/segments-bytes.png)")
    parser.add_argument("--quick", action="store_true", help="sizes 2,000 and 20,000; no JSON")
    parser.add_argument("--one", nargs=3, metavar=("N", "TYPE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.adds, Path(args.one[2]))))
        return
    sizes = [2_000, 20_000] if args.quick else args.sizes
    env = environment()
    print(json.dumps(env))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="latent-segments-"))
    rows = []
    print(f"{'N':>9} {'factory':>8} {'add N s':>8} {'peak RSS':>9} {'files':>8} {'add 1k s':>9} "
          f"{'vec B/add':>10} {'all B/add':>10} {'before B/add':>12} {'cold s':>7} {'cold CPU':>8} {'full read s':>11}")
    for n in sizes:
        directory = work / f"n{n}"
        shutil.rmtree(directory, ignore_errors=True)
        child = subprocess.run([sys.executable, __file__, "--one", str(n), args.type, str(directory),
                                "--adds", str(args.adds)], capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(child.stderr[-3000:])
        row = json.loads(child.stdout.strip().splitlines()[-1])
        row["cold_seconds"], row["cold_cpu_seconds"] = cold(directory, args.cold_runs)
        row["median_add_seconds"] = statistics.median(a["seconds"] for a in row["adds"])
        row["max_add_seconds"] = max(a["seconds"] for a in row["adds"])
        row["median_vector_bytes"] = statistics.median(a["vector_bytes"] for a in row["adds"])
        row["median_all_bytes"] = statistics.median(a["all_bytes"] for a in row["adds"])
        rows.append(row)
        print(f"{n:>9,} {row['factory']:>8} {row['add_seconds']:>8.1f} {row['peak_rss_mib']:>7.0f}Mi "
              f"{row['vector_files_mib']:>6.0f}Mi {row['median_add_seconds']:>9.3f} {row['median_vector_bytes']:>10,.0f} "
              f"{row['median_all_bytes']:>10,.0f} {row['base_bytes']:>12,} {row['cold_seconds']:>7.2f} "
              f"{row['cold_cpu_seconds']:>8.2f} "
              f"{row['full_read_seconds']:>11.2f}", flush=True)
        if not args.quick:
            append_result("segments", {"env": env, **row})
        shutil.rmtree(directory, ignore_errors=True)
    big, small = rows[-1], rows[0]
    growth = big["median_vector_bytes"] / max(small["median_vector_bytes"], 1)
    print(f"\ntarget: adding 1,000 vectors to {big['n']:,} items < 1 s: median {big['median_add_seconds']:.3f} s, "
          f"slowest {big['max_add_seconds']:.3f} s -> {'MET' if big['max_add_seconds'] < 1 else 'NOT MET'}")
    print(f"target: bytes per add independent of N: {small['n']:,} -> {big['n']:,} items ({big['n'] / small['n']:.0f}x) "
          f"changes vector bytes per add {growth:.2f}x (before: the whole vectors.faiss, "
          f"{big['base_bytes'] / max(small['base_bytes'], 1):.0f}x)")
    print(f"target: cold `latent similar` at {big['n']:,} ({big['factory']}) <= 1 s: {big['cold_seconds']:.2f} s "
          f"({big['cold_cpu_seconds']:.2f} s of CPU) -> {'MET' if big['cold_seconds'] <= 1 else 'NOT MET'}")
    ratio = big["peak_rss_mib"] / max(big["vector_files_mib"], 1e-9)
    print(f"target: peak RSS adding {big['n']:,} <= 1.5x the vector files: {big['peak_rss_mib']:.0f} MiB for "
          f"{big['vector_files_mib']:.0f} MiB = {ratio:.2f}x -> {'MET' if ratio <= 1.5 else 'NOT MET'}")
    paths = [RESULTS / "segments_bytes.png"] + ([args.figure] if args.figure else [])
    plot(rows, paths)
    print("plot:", ", ".join(map(str, paths)))
    if not args.quick:
        append_result("segments", {"env": env, "summary": True, "sizes": [r["n"] for r in rows],
                                   "bytes_growth": growth, "peak_rss_ratio": ratio})


if __name__ == "__main__":
    main()
