"""Times `latent demo` as whole processes: the first run (building the cached GloVe word
index and the demo sentence index) and cached runs. Targets: first < 180 s, cached < 15 s
on 2 cores. Prints the figures and appends a JSON line to benchmarks/results/demo.jsonl.

    python benchmarks/bench_demo.py [--repeat 3] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "demo.jsonl"


def run_demo(env: dict) -> float:
    latent = Path(sys.executable).with_name("latent")
    started = time.perf_counter()
    out = subprocess.run([str(latent), "--quiet", "demo"], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"latent demo failed ({out.returncode}):\n{out.stderr}")
    if "bathroom" not in out.stdout.split("words nearest to 'king'")[0]:
        raise SystemExit("check failed: 'bathroom' is not among the neighbours of 'toilet'")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="cached runs to time")
    parser.add_argument("--cache-dir", help="cache directory to use (default: a new temporary one)")
    args = parser.parse_args()
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="latent-bench-"))
    if cache.exists():
        shutil.rmtree(cache)
    env = {**os.environ, "LATENT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, cache {cache}, repeat {args.repeat}")
    first = run_demo(env)
    cached = [run_demo(env) for _ in range(args.repeat)]
    result = {
        "bench": "demo", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
        "first_run_s": round(first, 2), "cached_median_s": round(statistics.median(cached), 2),
        "cached_min_s": round(min(cached), 2), "cached_max_s": round(max(cached), 2),
        "targets": {"first_run_s": 180, "cached_s": 15},
    }
    print(f"first run {first:.1f} s (target < 180); cached median {result['cached_median_s']:.1f} s "
          f"(min {min(cached):.1f}, max {max(cached):.1f}; target < 15)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    if args.cache_dir is None:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
