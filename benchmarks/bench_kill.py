"""Kill `latent add` many times (default 200) and verify the index after each kill.

The harness (tests/system/kill_harness.py, also used by the 25-run test in the suite) starts
the real `latent add -v` on a fresh slice of GloVe words and SIGKILLs it after a random
delay or at a named failpoint (after a SQLite commit; after the temporary vectors file
is written; after its fsync, before the rename; after the rename). After every kill:
`latent check` passes before any repair, every batch the command reported as committed
is present, nothing never offered is, and after reopening FAISS ids == item ids.
Prints a summary and appends a JSON line to benchmarks/results/kill.jsonl.

    python benchmarks/bench_kill.py [--runs 200] [--per-run 1500] [--seed 0]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "system"))
RESULTS = Path(__file__).parent / "results" / "kill.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--per-run", type=int, default=1500, help="words offered to each `latent add`")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import sqlite3

    from latent.indexer.encoders.glove import load_glove
    from kill_harness import KillHarness

    print(f"args {vars(args)}; python {platform.python_version()}, faiss {faiss.__version__}, "
          f"sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cpus")
    words = load_glove()[0][100:]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        harness = KillHarness(Path(tmp) / "killed", words, per_run=args.per_run, batch=args.batch, seed=args.seed)
        harness.create()
        for i, (mode, when) in enumerate(harness.plan(args.runs)):
            run = harness.run(mode, when)
            if (i + 1) % 10 == 0 or i + 1 == args.runs:
                print(f"run {i + 1:4d}/{args.runs}: {mode:15} {when:>6} killed={run.killed!s:5} "
                      f"batches={run.batches:3d} items in index={run.count}", flush=True)
        summary = harness.summary()
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs_detail"}, indent=2))
    print(f"all {summary['runs']} runs verified: no committed batch lost, check passed every time")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps({"bench": "kill", "args": vars(args), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            **{k: v for k, v in summary.items() if k != "runs_detail"}}) + "\n")


if __name__ == "__main__":
    main()
