"""Data sets and helpers shared by the benchmark scripts (not named datasets.py: that would hide
Hugging Face's `datasets` package from the scripts, and transformers looks for it). Everything comes from bundled models,
nothing is downloaded; computed arrays are cached under $LATENT_BENCH_CACHE (default
~/.cache/latent/bench) so a second run starts at once.

- `glove_angular()`: the GloVe 6B 50-d vocabulary (400,000 words) split into 390,000 indexed
  words and 10,000 held-out query words (random, seed 0), unit-normalised, with the exact
  100 nearest indexed words of every query (inner product = cosine): "glove-50-angular-400k".
- `minilm_words()`: MiniLM (all-MiniLM-L6-v2, 384-d) embeddings of the 120,000 most frequent
  GloVe words, split into 110,000 indexed and 10,000 held-out queries, with exact neighbours.
- `synthetic_384(n)`: n 384-d unit vectors made from the MiniLM set (a random real vector plus
  half of another plus Gaussian noise), for sizes beyond what can be encoded here.
- `clustered_64(n)`: n 64-d unit vectors around 4,096 Gaussian cluster centres, made in blocks.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).parent / "results"


def cache_dir() -> Path:
    path = Path(os.environ.get("LATENT_BENCH_CACHE") or Path.home() / ".cache" / "latent" / "bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int = 100) -> np.ndarray:
    """Row indices into `base` of the exact k nearest (inner product) of every query."""
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, ids = flat.search(queries, k)
    return ids.astype(np.int64)


class Dataset:
    """Indexed vectors with keys, held-out queries and their exact neighbours (indices into base)."""

    def __init__(self, name: str, keys: list[str], base: np.ndarray, query_keys: list[str],
                 queries: np.ndarray, gt: np.ndarray):
        self.name, self.keys, self.base = name, keys, base
        self.query_keys, self.queries, self.gt = query_keys, queries, gt

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    def __repr__(self) -> str:
        return f"{self.name}: {len(self.base):,} x {self.dim}-d, {len(self.queries):,} queries"


def _split(name: str, words: list[str], vectors: np.ndarray, n_queries: int, seed: int = 0) -> Dataset:
    path = cache_dir() / f"{name}.npz"
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(len(words), n_queries, replace=False))
    mask = np.ones(len(words), bool)
    mask[held] = False
    base_rows = np.flatnonzero(mask)
    base, queries = unit(vectors[base_rows]), unit(vectors[held])
    if path.exists():
        gt = np.load(path)["gt"]
    else:
        gt = exact_neighbours(base, queries)
        np.savez(path, gt=gt)
    # queries in random order: held-out rows are sorted, and the vocabularies are in frequency
    # order, so the first queries would be the most frequent (and easiest) words
    order = np.random.default_rng(seed + 1).permutation(n_queries)
    return Dataset(name, [words[i] for i in base_rows], base, [words[i] for i in held[order]], queries[order],
                   gt[order])


def glove_angular(n_queries: int = 10_000) -> Dataset:
    from latent.indexer.encoders.glove import load_glove

    words, _, vectors = load_glove()
    return _split("glove-50-angular-400k", words, np.asarray(vectors, dtype=np.float32), n_queries)


def minilm_words(n: int = 120_000, n_queries: int = 10_000) -> Dataset:
    """MiniLM embeddings of the n most frequent GloVe words (the vocabulary is in frequency order)."""
    from latent.indexer.encoders.glove import load_glove

    words = load_glove()[0][:n]
    path = cache_dir() / f"minilm-words-{n}.npy"
    if path.exists():
        vectors = np.load(path)
    else:
        from latent.indexer.encoders import get_encoder

        encoder = get_encoder("minilm")
        started, parts = time.time(), []
        for start in range(0, n, 4096):
            parts.append(encoder.encode(words[start:start + 4096]))
            print(f"  encoding GloVe words with minilm: {start + len(parts[-1]):,}/{n:,} "
                  f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        vectors = np.concatenate(parts)
        np.save(path, vectors)
    return _split(f"minilm-384-words-{n // 1000}k", words, vectors, n_queries)


def synthetic_384(n: int, seed: int = 1) -> np.ndarray:
    """n unit 384-d vectors near the real MiniLM ones: a real vector, plus half of another, plus noise."""
    real = minilm_words().base
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        a, b = rng.integers(0, len(real), m), rng.integers(0, len(real), m)
        noise = rng.standard_normal((m, real.shape[1]), dtype=np.float32) * 0.02
        out[start:start + m] = unit(real[a] + 0.5 * real[b] + noise)
    return out


def clustered_64(n: int, start: int = 0, seed: int = 2, clusters: int = 4096) -> np.ndarray:
    """Rows start..start+n of an endless clustered 64-d set (the same rows for the same arguments)."""
    centres = unit(np.random.default_rng(seed).standard_normal((clusters, 64), dtype=np.float32))
    out = np.empty((n, 64), dtype=np.float32)
    block = 1_000_000
    for b in range(start // block, (start + n - 1) // block + 1):
        rng = np.random.default_rng([seed, b])
        rows = unit(centres[rng.integers(0, clusters, block)] +
                    rng.standard_normal((block, 64), dtype=np.float32) * 0.1)
        lo, hi = max(start, b * block), min(start + n, (b + 1) * block)
        out[lo - start:hi - start] = rows[lo - b * block:hi - b * block]
    return out


def recall_at(found: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact k nearest found among the first k results of each query."""
    found = np.asarray(found)[:, :k]
    hits = sum(len(np.intersect1d(f, g[:k])) for f, g in zip(found, gt))
    return hits / (len(gt) * k)


def user_env(**extra: str) -> dict:
    """The environment of a whole-process (cold start) measurement, as a user's shell has it:
    without PYTHONDONTWRITEBYTECODE, which this project's sandbox sets. A user's installed
    package has its bytecode compiled by pip, and a checkout writes __pycache__ on its first
    run; without that, compiling latent's sources costs every cold command about 0.25 s (of
    1.4 s for `latent similar` on 100,000 items). Run one untimed process first, which writes it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def environment() -> dict:
    """Library versions, thread settings and the machine, printed and stored with every result."""
    import faiss

    info = {"python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__,
            "cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "machine": platform.machine()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import sqlite3
    from importlib.metadata import PackageNotFoundError, version

    info["sqlite"] = sqlite3.sqlite_version
    for name in ("torch", "hnswlib", "chromadb", "sqlite-utils", "transformers"):
        try:
            info[name] = version(name)  # without importing it (torch alone costs half a GiB)
        except PackageNotFoundError:
            info[name] = None
    return info


def append_result(topic: str, record: dict) -> Path:
    """Append one JSON line to benchmarks/results/<topic>.jsonl."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{topic}.jsonl"
    record = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cached_index(directory: Path, count: int) -> bool:
    """Whether `directory` holds an index of `count` items to reuse; one of another size is removed."""
    if not directory.exists():
        return False
    from latent.indexer import Index

    with Index.open(directory) as index:
        if index.count() == count:
            return True
    shutil.rmtree(directory)
    return False
