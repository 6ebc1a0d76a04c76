"""Load on `latent serve`: concurrent text queries over HTTP against the Python API in-process.

Builds (or reuses, from the cache directory) a GloVe index of 100,000 words (the first
100,000 after the 100 most frequent), starts `latent serve` on it in a subprocess on a
loopback port, and from this process sends the same word queries from N client threads
(httpx, keep-alive), bounded in time and count: queries/s and p50/p95/p99 latency. Then
the same queries through `search(index, q, k)` in this process, one at a time. Results are
compared (keys and scores) before any speed is printed; figures are appended as a JSON line
to benchmarks/results/serve.jsonl.

    python benchmarks/bench_serve.py [--items 100000] [--threads 4 8] [--seconds 20] [--max-queries 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).parent / "results" / "serve.jsonl"


def build_index(directory: Path, items: int, skip: int):
    """The GloVe index of words[skip:skip + items], built once and reused."""
    from latent.indexer import Index, Record
    from latent.indexer.encoders.glove import load_glove

    if (directory / "latent.db").exists():
        index = Index.open(directory)
        if index.count() == items and index.store.manifest().get("complete"):
            return index, 0.0
        index.close()
        shutil.rmtree(directory)
    started = time.perf_counter()
    index = Index.create(directory, encoder="glove", index_type="auto")
    words = load_glove()[0][skip:skip + items]
    index.add((Record(text=w, key=w, kind="word") for w in words), batch_size=20_000)
    index.store.set_manifest(complete=True)
    return index, time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory: Path, port: int, log: Path) -> subprocess.Popen:
    """`latent serve DIRECTORY` on 127.0.0.1:port, answering once /api/indexes does."""
    import httpx

    env = {k: v for k, v in os.environ.items() if k != "LATENT_TOKEN"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", str(directory), "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/indexes", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not answer within 180 s: {log.read_text()[-2000:]}")


def percentiles(latencies_s: list[float]) -> dict:
    ms = np.array(latencies_s) * 1000
    return {f"p{p}_ms": round(float(np.percentile(ms, p)), 3) for p in (50, 95, 99)} | \
        {"mean_ms": round(float(ms.mean()), 3)}


def http_load(url: str, path: str, queries: list[str], threads: int, seconds: float, max_queries: int,
              k: int) -> dict:
    """Queries from `threads` workers (each its own keep-alive client), until `seconds` pass or
    `max_queries` are answered; every answer must be a 200."""
    import httpx

    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    counter = iter(range(max_queries))
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.perf_counter() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                r = client.get(path, params={"q": queries[i % len(queries)], "k": k})
                latencies[slot].append(time.perf_counter() - started)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    done = [x for per in latencies for x in per]
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {"client_threads": threads, "queries": len(done), "seconds": round(elapsed, 2),
            "qps": round(len(done) / elapsed, 1), **percentiles(done)}


def in_process(index, queries: list[str], seconds: float, max_queries: int, k: int) -> dict:
    from latent.search import search

    latencies = []
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    for i in range(max_queries):
        if time.perf_counter() >= stop_at:
            break
        t0 = time.perf_counter()
        search(index, queries[i % len(queries)], k=k)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {"queries": len(latencies), "seconds": round(elapsed, 2), "qps": round(len(latencies) / elapsed, 1),
            **percentiles(latencies)}


def check_same(url: str, path: str, index, queries: list[str], k: int) -> int:
    """HTTP and in-process give the same keys and scores (to float32 precision) for each query."""
    import httpx

    from latent.search import search

    with httpx.Client(base_url=url, timeout=60) as client:
        for q in queries:
            response = client.get(path, params={"q": q, "k": k})
            if response.status_code != 200:
                raise SystemExit(f"the server answered {response.status_code}: {response.text[:300]}")
            served = response.json()["hits"]
            local = search(index, q, k=k)
            if [h["key"] for h in served] != [h.key for h in local] or \
                    not np.allclose([h["score"] for h in served], [h.score for h in local], atol=1e-6):
                raise SystemExit(f"HTTP and in-process disagree on {q!r}: "
                                 f"{[h['key'] for h in served]} vs {[h.key for h in local]}")
    return len(queries)


def latency_line(run: dict) -> str:
    return f"latency p50 {run['p50_ms']} ms, p95 {run['p95_ms']} ms, p99 {run['p99_ms']} ms"


def measure_http(directory: Path, index, queries: list[str], args) -> dict:
    """`latent serve` in a subprocess: its answers checked against in-process ones, then one timed
    run per client thread count."""
    port = free_port()
    url, path = f"http://127.0.0.1:{port}", f"/api/indexes/{directory.name}/search"
    work = Path(tempfile.mkdtemp(prefix="latent-bench-serve-"))
    proc = start_server(directory, port, work / "server.log")
    out: dict = {"http": []}
    try:
        out["checked_equal"] = check_same(url, path, index, queries[: args.check], args.k)
        print(f"HTTP and in-process agree on {out['checked_equal']} queries (keys and scores)")
        http_load(url, path, queries, 2, 2.0, 200, args.k)  # warm-up
        for threads in args.threads:
            run = http_load(url, path, queries, threads, args.seconds, args.max_queries, args.k)
            out["http"].append(run)
            print(f"HTTP, {threads} client threads: {run['qps']:,.1f} queries/s ({run['queries']} in "
                  f"{run['seconds']} s); {latency_line(run)}")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return out


def measure_in_process(index, queries: list[str], args) -> dict:
    """`search(index, q, k)` in this process, one query at a time (FAISS runs a single query on
    one OpenMP thread: see indexer/vector_index.py, _threads_for)."""
    in_process(index, queries, 2.0, 200, args.k)  # warm-up
    local = in_process(index, queries, args.seconds, args.max_queries, args.k)
    print(f"in-process: {local['qps']:,.1f} queries/s ({local['queries']} in {local['seconds']} s); "
          f"{latency_line(local)}")
    return {"in_process": local}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="GloVe words in the index")
    parser.add_argument("--skip", type=int, default=100, help="most frequent words left out")
    parser.add_argument("--threads", type=int, nargs="+", default=[4, 8], help="client threads, one run each")
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit of each run")
    parser.add_argument("--max-queries", type=int, default=20_000, help="query limit of each run")
    parser.add_argument("--queries", type=int, default=2_000, help="distinct query words (seeded sample)")
    parser.add_argument("--check", type=int, default=200, help="queries compared between HTTP and in-process")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--cache", type=Path, help="where the index is kept (default: latent's cache directory)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import faiss

    from latent.indexer.paths import cache_dir

    directory = (args.cache or cache_dir()) / f"bench-serve-glove-{args.items}"
    index, built = build_index(directory, args.items, args.skip)
    words = [row["key"] for row in index.store.fetch(index.store.ids()[:: max(1, args.items // 50_000)]).values()]
    queries = [str(w) for w in np.random.default_rng(0).choice(words, size=args.queries, replace=False)]
    versions = {name: version(name) for name in ("fastapi", "uvicorn", "starlette", "pydantic", "httpx", "numpy")}
    versions |= {"faiss": faiss.__version__, "python": platform.python_version()}
    print(f"args: {vars(args)}")
    print(f"versions: {versions}")
    print(f"cpus {os.cpu_count()}, client threads {args.threads}, FAISS OpenMP threads "
          f"{faiss.omp_get_max_threads()} (a single query runs on 1, in the server and in-process); "
          f"index {directory} ({index.count():,} words, {index.vectors.factory}, "
          f"{'built in %.1f s' % built if built else 'reused'}); {len(queries)} distinct query words, k={args.k}")

    result = {"bench": "serve", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
              "args": {k: str(v) for k, v in vars(args).items()}, "versions": versions, "items": index.count(),
              "factory": index.vectors.factory}
    result |= measure_http(directory, index, queries, args)
    result |= measure_in_process(index, queries, args)
    best = max(result["http"], key=lambda r: r["qps"])
    result["http_over_in_process_qps"] = round(best["qps"] / result["in_process"]["qps"], 3)
    print(f"best HTTP / in-process queries/s: {result['http_over_in_process_qps']:.3f} "
          f"({best['client_threads']} client threads)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
