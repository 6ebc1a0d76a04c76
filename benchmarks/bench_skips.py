"""Peak memory of `latent add` on inputs of bad lines only, and the skipped table's growth.

For each size (default 1M and 2M lines), writes a JSONL file whose every line is malformed,
runs the real `latent add` on a fresh `vectors:8` index (no model to load) in a child
process, and reads the child's peak RSS (wait4's ru_maxrss); a run with no bad lines gives
the baseline. The same file is then added a second time, to see whether the skipped table
grows. Prints the figures and appends a JSON line to benchmarks/results/skips.jsonl.

    python benchmarks/bench_skips.py [--sizes 1000000 2000000] [--root CHECKOUT]

--root measures another checkout of latent (one with `.pkg/latent` linking to it), e.g. the
commit before skips were streamed to the store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "skips.jsonl"
CLI = "from latent.cli import main; main()"


def latent(root: Path, *args: str) -> tuple[float, str]:
    """Run `latent ARGS` from checkout `root`; (peak RSS in MiB, stderr tail)."""
    env = {**os.environ, "PYTHONPATH": str(root / ".pkg"), "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", CLI, *args], env=env, cwd=root,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = child.stderr.read()  # bounded by the command's own report
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"latent {' '.join(args)} failed: {err[-2000:].decode(errors='replace')}")
    return usage.ru_maxrss / 1024, err[-300:].decode(errors="replace")


def skipped_rows(directory: Path) -> int:
    conn = sqlite3.connect(f"file:{directory / 'latent.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM skipped").fetchone()[0]
    finally:
        conn.close()


def measure(root: Path, tmp: Path, lines: int) -> dict:
    source = tmp / f"bad-{lines}.jsonl"
    with open(source, "wb") as f:
        f.write(b"x\n" * lines)  # every line is malformed JSON
    directory = tmp / f"index-{lines}"
    latent(root, "create", str(directory), "--encoder", "vectors:8", "--index", "flat")
    started = time.perf_counter()
    peak, tail = latent(root, "add", str(directory), str(source))
    seconds = time.perf_counter() - started
    rows, size = skipped_rows(directory), (directory / "latent.db").stat().st_size
    latent(root, "add", str(directory), str(source))  # the same file again
    rows_again, size_again = skipped_rows(directory), (directory / "latent.db").stat().st_size
    source.unlink()
    return {"lines": lines, "input_mb": round(lines * 2 / 1e6, 1), "peak_rss_mb": round(peak, 1),
            "seconds": round(seconds, 1), "skipped_rows": rows, "db_mb": round(size / 2**20, 1),
            "skipped_rows_after_again": rows_again, "db_mb_after_again": round(size_again / 2**20, 1),
            "stderr_tail": tail.strip().splitlines()[-1] if tail.strip() else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout of latent to measure")
    args = parser.parse_args()
    root = args.root.resolve()
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"checkout {root} ({commit}); python {platform.python_version()}, sqlite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory() as tmp:
        baseline = measure(root, Path(tmp), 0)
        print(f"{0:>10,} bad lines: peak RSS {baseline['peak_rss_mb']:7.1f} MiB (baseline)")
        runs = []
        for lines in args.sizes:
            run = measure(root, Path(tmp), lines)
            run["mb_per_million_over_baseline"] = round((run["peak_rss_mb"] - baseline["peak_rss_mb"])
                                                        / (lines / 1e6), 1)
            runs.append(run)
            print(f"{lines:>10,} bad lines: peak RSS {run['peak_rss_mb']:7.1f} MiB "
                  f"({run['mb_per_million_over_baseline']} MiB per 1M over the baseline), {run['seconds']} s; "
                  f"skipped table {run['skipped_rows']:,} rows, latent.db {run['db_mb']} MiB; the same file "
                  f"again: {run['skipped_rows_after_again']:,} rows, {run['db_mb_after_again']} MiB")
    result = {"bench": "skips", "commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
              "baseline": baseline, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
