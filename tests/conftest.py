"""Shared fixtures for the three layers, marked by folder: tests/unit (the `fake` encoder below,
no model loads), tests/integration (the real bundled models, loaded once per session) and
tests/system (the CLI as a process, kills, faults, the server and the browser). No network."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LATENT_LOCK_TIMEOUT", "5")

import numpy as np
import pytest

from latent.indexer import Index, Record
from latent.indexer.builtin import SENTENCES
from latent.indexer.encoders import Encoder, register

TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(config, items):
    """Mark each test with its layer, the folder it lives in (`pytest -m unit` runs tests/unit)."""
    for item in items:
        layer = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/unit, tests/integration or tests/system")
        item.add_marker(getattr(pytest.mark, layer))


class FakeEncoder(Encoder):
    """A deterministic hashed bag of words for unit tests: each lowercased word adds a fixed
    pseudo-random vector seeded by its hash, so texts sharing words are near and the same text
    always gives the same vector. Encodes texts and words; loads nothing."""

    name = "fake"
    version = "1"
    dim = 32
    modalities = ("text", "word")

    def _embed(self, items):
        out = np.zeros((len(items), self.dim), dtype=np.float64)
        for row, text in enumerate(items):
            for word in re.findall(r"\w+", text.lower()) or [text]:
                seed = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
                out[row] += np.random.default_rng(seed).standard_normal(self.dim)
        return out


register("fake", FakeEncoder, "tests only: a deterministic hashed bag of words, 32-d, no model")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Built-in indexes (the GloVe word index) go to one per-session cache directory."""
    path = tmp_path_factory.mktemp("latent-cache")
    os.environ["LATENT_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def sentences() -> list[dict]:
    """The 400 demo sentences shipped with latent: {id, topic, text}."""
    return [json.loads(line) for line in SENTENCES.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def glove_words() -> list[str]:
    from latent.indexer.encoders.glove import load_glove

    return load_glove()[0]


def word_records(words, metadata=None):
    """Records for GloVe words, keyed by the word; `metadata(word, i)` gives their metadata."""
    return [Record(text=w, key=w, kind="word", metadata=metadata(w, i) if metadata else {}, source="test", line=i)
            for i, w in enumerate(words)]


@pytest.fixture
def make_word_index(tmp_path, glove_words):
    """Factory: a GloVe index over the first n words (after `skip`), of an index type."""

    def make(n=2000, index_type="flat", metadata=None, skip=100, name="words"):
        index = Index.create(tmp_path / f"{name}-{index_type.replace(',', '_')}", encoder="glove",
                             index_type=index_type)
        index.add(word_records(glove_words[skip:skip + n], metadata))
        return index

    return make


@pytest.fixture(scope="session")
def sentence_index_dir(tmp_path_factory, sentences) -> Path:
    """A minilm index over the demo sentences (keys = ids, metadata = topic), built once; copy before writing."""
    directory = tmp_path_factory.mktemp("sentences") / "idx"
    index = Index.create(directory, encoder="minilm", index_type="flat")
    index.add(Record(text=s["text"], key=s["id"], metadata={"topic": s["topic"]}) for s in sentences)
    index.close()
    return directory


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def sql(directory, query, params=()):
    """A query on latent.db through a separate, plain sqlite3 connection."""
    conn = sqlite3.connect(str(Path(directory) / "latent.db"))
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def store_generation(directory) -> int:
    return int(json.loads(sql(directory, "SELECT value FROM manifest WHERE key = 'generation'")[0][0]))


@contextmanager
def running(app):
    """Serve the ASGI `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
