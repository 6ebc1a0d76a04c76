"""latent on Ray, against the local path, on the same inputs in one run:

- encoding: items/s of `add` with the inputs read and encoded on a ray.cluster_utils.Cluster
  of 1 and then 2 worker nodes (one MiniLM encoder actor per worker node, 1 logical CPU each;
  the head node holds the readers), against a local `add` (in-process, model loaded first).
  Inputs: N distinct lines of two or three demo sentences (indexer/data/sentences.jsonl, seeded).
  Per run: whole items/s (the call to add until it returns) and steady items/s (items committed
  after the first batch / time from the first commit to the last);
- the cluster's fixed overhead: starting the cluster (head + worker nodes), and from the start
  of the add to its first committed batch (actors started, model loaded, first batch through);
- building IVF-PQ: `rebuild` (local: train, add, save) against `rebuild --ray` (train here,
  blocks added by Ray tasks on 2 worker nodes, merged here, save) of the same index: N
  synthetic clustered 384-d vectors (1,000 Gaussian centres plus noise, seeded), factory
  --factory; both include the same training.

All nodes run on this machine, on the loopback interface: with its 2 cores the cluster cannot
be faster than the local path, so the figures say what the pipeline costs and how it scales
per node, not what a real cluster gains. Printed, and appended to benchmarks/results/ray.jsonl.

    python benchmarks/bench_ray.py [--texts 1000] [--vectors 30000] [--factory IVF128,PQ24] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_data import append_result, environment  # noqa: E402


def make_lines(n: int, path: Path) -> None:
    from latent.indexer.builtin import SENTENCES

    sentences = [json.loads(line)["text"] for line in SENTENCES.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(0)
    seen: set[str] = set()
    while len(seen) < n:
        seen.add(" ".join(rng.sample(sentences, rng.choice((2, 3)))))
    path.write_text("\n".join(sorted(seen)) + "\n", encoding="utf-8")


def timed_add(index, items, batch_size: int) -> dict:
    commits: list[tuple[float, int]] = []
    started = time.perf_counter()
    report = index.add(items, batch_size=batch_size, on_commit=lambda g, n: commits.append((time.perf_counter(), n)))
    elapsed = time.perf_counter() - started
    first = commits[0][0] - started
    steady_items = sum(n for _, n in commits[1:])
    steady_s = commits[-1][0] - commits[0][0]
    return {"items": report.added, "seconds": round(elapsed, 2), "items_per_s": round(report.added / elapsed, 1),
            "first_commit_s": round(first, 2),
            "steady_items_per_s": round(steady_items / steady_s, 1) if steady_s > 0 else None}


def encode_runs(args, work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from latent.indexer import Index, read_inputs
    from latent.indexer.distributed import encoded_items
    from latent.indexer.encoders import get_encoder

    lines = work / "lines.txt"
    make_lines(args.texts, lines)
    get_encoder("minilm")
    out: dict = {"texts": args.texts, "batch_size": args.batch_size}
    with Index.create(work / "local", encoder="minilm", index_type="flat") as index:
        out["local"] = timed_add(index, read_inputs([str(lines)]), args.batch_size)
    print(f"local add: {out['local']}", flush=True)
    for workers in (1, 2):
        started = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(workers):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        start_s = time.perf_counter() - started
        try:
            with Index.create(work / f"ray{workers}", encoder="minilm", index_type="flat") as index:
                items = encoded_items([str(lines)], encoder="minilm", batch_size=args.batch_size,
                                      concurrency=workers, num_cpus=1)
                run = timed_add(index, items, args.batch_size)
        finally:
            ray.shutdown()
            cluster.shutdown()
        run["cluster_start_s"] = round(start_s, 2)
        out[f"ray_{workers}_workers"] = run
        print(f"ray, {workers} worker node(s): {run}", flush=True)
    return out


def build_runs(args, work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from latent.indexer import Index

    import numpy as np

    rng = np.random.default_rng(1)  # clustered synthetic 384-d vectors: 1,000 centres plus noise
    centres = rng.standard_normal((1000, 384)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, args.vectors)] + 0.5 * rng.standard_normal((args.vectors, 384)).astype(
        np.float32)
    keys = [f"v{i}" for i in range(len(vectors))]
    out: dict = {"vectors": len(vectors), "factory": args.factory}
    with Index.create(work / "ivf", encoder="vectors:384", index_type=args.factory) as index:
        for start in range(0, len(vectors), 10_000):
            index.add_vectors(keys[start:start + 10_000], vectors[start:start + 10_000])
        started = time.perf_counter()
        index.rebuild()
        out["local_build_s"] = round(time.perf_counter() - started, 2)
        print(f"local IVF-PQ build: {out['local_build_s']} s", flush=True)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            started = time.perf_counter()
            result = index.rebuild_in_parts(block=args.block)
            out["ray_build_s"] = round(time.perf_counter() - started, 2)
            out["ray_blocks"] = result["blocks"]
        finally:
            ray.shutdown()
            cluster.shutdown()
        print(f"IVF-PQ built in {result['blocks']} parts on 2 worker nodes: {out['ray_build_s']} s", flush=True)
    out["ray_over_local"] = round(out["ray_build_s"] / out["local_build_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vectors", type=int, default=30_000)
    parser.add_argument("--block", type=int, default=5_000, help="vectors per Ray task of the IVF-PQ build")
    parser.add_argument("--factory", default="IVF128,PQ24")
    parser.add_argument("--quick", action="store_true", help="400 texts, 10,000 vectors; nothing appended")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.vectors, args.block = 400, 10_000, 2_500
    env = environment()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.1f}; {env.get('cpus')} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        record = {"encode": encode_runs(args, work), "build": build_runs(args, work)}
    enc = record["encode"]
    for workers in (1, 2):
        run = enc[f"ray_{workers}_workers"]
        run["over_local"] = round(run["items_per_s"] / enc["local"]["items_per_s"], 2)
        if run["steady_items_per_s"] and enc["local"]["steady_items_per_s"]:
            run["steady_over_local"] = round(run["steady_items_per_s"] / enc["local"]["steady_items_per_s"], 2)
    record.update(load_before=round(load[0], 1), load_after=round(os.getloadavg()[0], 1), environment=env)
    print(json.dumps({k: v for k, v in record.items() if k != "environment"}, indent=2))
    if not args.quick:
        print(f"appended to {append_result('ray', record)}")


if __name__ == "__main__":
    main()
