"""Abuse of a real `latent serve` process on loopback, with bounded counts and times: a flood of
t-SNE map requests (one computes, the rest are refused at once with 429, and a cheap route keeps
answering within 1 s), a slow-loris of half-sent requests against a small connection cap (a good
request is answered or refused with 503 at once, and the server closes the half-open sockets
after its header timeout), and SIGTERM or SIGINT in the middle of a map (the process exits
within 5 s). The figures are printed (pytest -s shows them)."""

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from latent.indexer import Index

pytest.importorskip("sklearn.manifold")

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-the-abuse-tests-0123"
ITEMS = 6000  # more than the server's t-SNE cap (5,000)
FLOOD = 20  # concurrent map requests
CHEAP_LATENCY = 1.0  # seconds: the most a cheap route may take under the flood
CAP, SOCKETS, HEADER_TIMEOUT = 20, 60, 2.0  # the slow-loris: connection cap, half-sent requests, header timeout


@pytest.fixture(scope="module")
def vectors_index(tmp_path_factory) -> Path:
    """6,000 16-d vectors in 20 clusters: t-SNE of a few thousand of them takes seconds."""
    directory = tmp_path_factory.mktemp("abuse") / "vectors"
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16)) * 3
    vectors = centres[rng.integers(0, 20, ITEMS)] + rng.standard_normal((ITEMS, 16))
    index = Index.create(directory, encoder="vectors:16", index_type="flat")
    index.add_vectors([f"v{i}" for i in range(ITEMS)], vectors.astype(np.float32))
    index.close()
    return directory


@contextmanager
def latent_serve(directory: Path, *args: str, env: dict | None = None):
    """A `latent serve` process on a free loopback port; yields (base URL, process). Stopped
    (killed if it must be) on the way out."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    command = [sys.executable, str(ROOT / "cli.py"), "serve", str(directory), "--port", str(port), *args]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"latent serve exited: {process.stderr.read()}"
            assert time.monotonic() < deadline, "latent serve did not start listening within 60 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()


def figures(name: str, seconds: list[float]) -> tuple[float, float]:
    """(p50, max) of `seconds`, printed."""
    p50, top = float(np.median(seconds)), max(seconds)
    print(f"\n{name}: n={len(seconds)} p50={p50 * 1000:.1f} ms max={top * 1000:.1f} ms")
    return p50, top


def test_a_map_flood_is_refused_at_once_and_cheap_routes_keep_answering(vectors_index):
    with latent_serve(vectors_index) as (base, _), httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/api/indexes").status_code == 200
        pca = {"method": "pca", "sample": 500}
        cached = client.get("/api/indexes/vectors/map", params=pca).json()
        answers: list[httpx.Response] = []

        def ask(sample: int) -> None:
            try:
                answers.append(httpx.get(f"{base}/api/indexes/vectors/map", params={"method": "tsne", "sample": sample},
                                         timeout=120))
            except httpx.HTTPError:  # the map still computing when the server stops
                pass

        flood = [threading.Thread(target=ask, args=(2000 + 100 * i,), daemon=True) for i in range(FLOOD)]
        for thread in flood:
            thread.start()
        latencies = []
        until = time.monotonic() + 4
        while time.monotonic() < until:
            started = time.perf_counter()
            assert client.get("/api/indexes").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
        _, slowest = figures("GET /api/indexes during a flood of 20 t-SNE maps", latencies)
        assert slowest < CHEAP_LATENCY

        started = time.perf_counter()
        assert client.get("/api/indexes/vectors/map", params=pca).json() == cached  # a cached map answers at once
        assert time.perf_counter() - started < CHEAP_LATENCY
        refused = [a for a in answers if a.status_code == 429]
        assert len(refused) >= FLOOD - 1, [a.status_code for a in answers]  # one computes (or has finished)
        for answer in refused:
            assert answer.headers["retry-after"].isdigit()
            message = answer.json()["error"]
            assert "one at a time" in message and "\n" not in message
        # over the t-SNE cap: refused at once, saying the cap; PCA maps every item
        capped = client.get("/api/indexes/vectors/map", params={"method": "tsne", "sample": ITEMS})
        assert capped.status_code == 400 and "at most 5,000 points" in capped.json()["error"], capped.text
        assert "sample=5000" in capped.json()["error"] and "method=pca" in capped.json()["error"]


def test_a_slow_loris_is_cut_off_by_the_cap_and_the_header_timeout(vectors_index):
    args = ("--public", "--max-connections", str(CAP), "--header-timeout", str(HEADER_TIMEOUT))
    with latent_serve(vectors_index, *args, env={"LATENT_TOKEN": TOKEN}) as (base, _):
        host, port = base.removeprefix("http://").split(":")
        opened, sockets = {}, []
        lived = {}
        for _ in range(SOCKETS):  # half-sent requests, without the token
            s = socket.create_connection((host, int(port)), timeout=5)
            opened[s.fileno()] = time.monotonic()
            sockets.append(s)
            try:
                s.sendall(b"GET /api/indexes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            except (BrokenPipeError, ConnectionResetError):  # already closed: one over the cap
                lived[s.fileno()] = time.monotonic() - opened[s.fileno()]
        # a keep-alive connection that sends half a second request after a whole first one
        kept = socket.create_connection((host, int(port)), timeout=5)
        kept.sendall(f"GET /api/indexes HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += kept.recv(65536)
        head, _, body = head.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += kept.recv(65536)
        assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")), head
        kept.sendall(b"GET /api/indexes HTTP/1.1\r\n")
        opened[kept.fileno()] = time.monotonic()
        sockets.append(kept)

        waits = []
        for _ in range(5):  # good requests, with the token: answered, or refused with 503 at once
            started = time.perf_counter()
            answer = httpx.get(f"{base}/api/indexes", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            waits.append(time.perf_counter() - started)
            assert answer.status_code in (200, 503), answer.text
        _, slowest = figures(f"a good request during {SOCKETS} half-sent ones (cap {CAP})", waits)
        assert slowest < CHEAP_LATENCY

        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        while len(lived) < len(sockets) and time.monotonic() < deadline:
            ready, _, _ = select.select([s for s in sockets if s.fileno() not in lived], [], [], 0.2)
            for s in ready:
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                assert data == b"", data  # closed without an answer
                lived[s.fileno()] = time.monotonic() - opened[s.fileno()]
        for s in sockets:
            s.close()
        assert len(lived) == len(sockets), f"{len(sockets) - len(lived)} half-sent requests still open"
        figures(f"lifetime of {len(sockets)} half-sent requests (header timeout {HEADER_TIMEOUT:g} s)",
                list(lived.values()))
        assert max(lived.values()) < HEADER_TIMEOUT + 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_in_the_middle_of_a_map(vectors_index, sig):
    with latent_serve(vectors_index) as (base, process):
        answer: list = []

        def ask() -> None:  # a t-SNE of 5,000 points, asked again while a probe's map holds the slot
            try:
                while (got := httpx.get(f"{base}/api/indexes/vectors/map", params={"method": "tsne", "sample": 5000},
                                        timeout=60)).status_code == 429:
                    time.sleep(0.02)
                answer.append(got)
            except httpx.HTTPError as e:
                answer.append(e)

        threading.Thread(target=ask, daemon=True).start()
        deadline = time.monotonic() + 20
        for sample in range(10, 1000):  # a map not in the cache is refused while the t-SNE computes
            if httpx.get(f"{base}/api/indexes/vectors/map", params={"sample": sample}).status_code == 429:
                break
            assert time.monotonic() < deadline and not answer, "the t-SNE map did not start"
            time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(sig)
        process.wait(30)
        took = time.monotonic() - started
        print(f"\n{sig.name} in the middle of a t-SNE map: the process exited in {took:.2f} s "
              f"(code {process.returncode})")
        assert took < 5
        assert process.returncode in ((-signal.SIGTERM,) if sig == signal.SIGTERM else (0, 130))
        assert "Traceback" not in process.stderr.read()
        time.sleep(0.2)
        if answer and isinstance(answer[0], httpx.Response):  # told why, in one line
            assert answer[0].status_code == 503 and "stopping" in answer[0].json()["error"]


def test_the_limits_are_checked_without_naming_flags():
    from latent.search.server import Limits, ServeError
    from latent.search.server.connections import uvicorn_settings

    for bad in ({"max_connections": 0}, {"header_timeout": 0}, {"header_timeout": float("nan")}):
        with pytest.raises(ServeError, match="at least 1|more than 0") as caught:
            uvicorn_settings(**bad)
        assert "--" not in str(caught.value)
    with pytest.raises(ServeError, match="max_slow_map_sample"):
        Limits(max_slow_map_sample=Limits().max_sample + 1)
    settings = uvicorn_settings(max_connections=CAP, header_timeout=HEADER_TIMEOUT)
    assert settings["limit_concurrency"] == CAP + 1 and settings["http"].header_timeout == HEADER_TIMEOUT
