"""Readers without write access (issue "Reliability, round 2", finding 10): an index on a
read-only mount, or owned by another user, opens read-only (SQLite `mode=ro`, or `immutable=1`
where not even the -shm file can be created), never touches write.lock, repairs a stale or
missing vectors file in memory only, searches, and refuses writes with a clear "read-only".

The reader runs as the unprivileged user `nobody` (setpriv), since root ignores permission
bits; the index lives in a world-readable temporary directory owned by root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import latent.indexer.vector_index as vx
from latent.indexer import Index

from kill_harness import latent_command

ROOT = Path(__file__).resolve().parents[2]
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

READER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from latent.indexer import Index
    from latent.indexer.errors import ReadOnlyIndex
    from latent.search import similar

    directory, expected = sys.argv[1], int(sys.argv[2])
    index = Index.open(directory)
    out = {"read_only": index.store.read_only, "count": index.count()}
    out["hits"] = [h.key for h in similar(index, key="k0", k=3)]
    newest = index.vector_of(f"k{expected - 1}")
    out["newest"] = [h.key for h in similar(index, vector=newest, k=1)]
    out["recovered"] = index.recovered
    out["vectors"] = int(index.vectors.ntotal)
    out["check_ok"] = index.check()["ok"]
    refused = {}
    for name, write in [("add", lambda: index.add_vectors(["new"], np.ones((1, 8), np.float32))),
                        ("delete", lambda: index.delete(["k0"])), ("rebuild", index.rebuild)]:
        try:
            write()
            refused[name] = None
        except ReadOnlyIndex as e:
            refused[name] = str(e)
    out["refused"] = refused
    index.close()
    print(json.dumps(out))
""")


@pytest.fixture
def shared_dir():
    """A directory `nobody` can read but not write."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a reader as the unprivileged user nobody")
    directory = Path(tempfile.mkdtemp(prefix="latent-ro-", dir="/tmp"))
    directory.chmod(0o755)
    probe = subprocess.run([*AS_NOBODY, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        shutil.rmtree(directory)
        pytest.skip(f"setpriv cannot switch to nobody here: {probe.stderr.strip()}")
    yield directory
    shutil.rmtree(directory)


def make_index(directory: Path, n: int) -> Path:
    path = directory / "idx"
    rng = np.random.default_rng(0)
    with Index.create(path, encoder="vectors:8", index_type="flat") as index:
        index.add_vectors([f"k{i}" for i in range(n)], rng.standard_normal((n, 8)).astype(np.float32))
    return path


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1", "HOME": "/tmp"}
    return subprocess.run([*AS_NOBODY, *args], capture_output=True, text=True, cwd="/", env=env, timeout=120)


def read_as_nobody(path: Path, expected: int) -> dict:
    out = as_nobody(sys.executable, "-c", READER, str(path), str(expected))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def assert_read_only_reader(report: dict, expected: int, *, intact: bool = True) -> None:
    assert report["read_only"] and report["count"] == report["vectors"] == expected
    assert len(report["hits"]) == 3 and "k0" not in report["hits"]
    assert report["newest"] == [f"k{expected - 1}"]
    assert report["check_ok"] == intact  # `check` reports a missing vectors file (opening rebuilds it)
    for name, message in report["refused"].items():
        assert message and "is read-only for this process" in message and "searching it works" in message, name


def test_reader_without_write_access_opens_searches_and_refuses_writes(shared_dir):
    path = make_index(shared_dir, 200)
    (path / "write.lock").unlink()
    assert not list(path.glob("latent.db-*"))  # closed cleanly: no -wal, no -shm (immutable is needed)
    before = files(path)
    report = read_as_nobody(path, 200)
    assert_read_only_reader(report, 200)
    assert report["recovered"] is None
    assert files(path) == before and not (path / "write.lock").exists()  # nothing written, no lock taken


def test_reader_without_write_access_sees_a_live_writer(shared_dir):
    """While a writer has the index open, its -shm file exists: the reader uses `mode=ro` and
    reads what is committed, even what is still in the -wal file."""
    path = make_index(shared_dir, 100)
    writer = Index.open(path)
    rng = np.random.default_rng(1)
    writer.add_vectors([f"k{i}" for i in range(100, 150)], rng.standard_normal((50, 8)).astype(np.float32))
    try:
        assert (path / "latent.db-shm").exists()
        assert_read_only_reader(read_as_nobody(path, 150), 150)
    finally:
        writer.close()


@pytest.mark.parametrize("damage", ["stale", "missing"])
def test_reader_without_write_access_repairs_the_vectors_file_in_memory_only(shared_dir, damage):
    path = make_index(shared_dir, 100)
    with Index.open(path) as index:
        index._save_vectors = lambda: None  # as after a crash between the commit and the save
        rng = np.random.default_rng(2)
        index.add_vectors([f"k{i}" for i in range(100, 130)], rng.standard_normal((30, 8)).astype(np.float32))
    if damage == "missing":
        (path / vx.FILE_NAME).unlink()
    before = files(path)
    report = read_as_nobody(path, 130)
    assert_read_only_reader(report, 130, intact=damage == "stale")
    assert report["recovered"].endswith("not saved: the index is read-only for this process"), report["recovered"]
    assert ("caught the vector index up" if damage == "stale" else "rebuilt") in report["recovered"]
    assert files(path) == before  # repaired in memory only


def test_cli_reader_without_write_access(shared_dir):
    path = make_index(shared_dir, 50)
    found = as_nobody(*latent_command(), "similar", str(path), "--key", "k0", "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["hits"]) == 3
    refused = as_nobody(*latent_command(), "delete", str(path), "k0")
    assert refused.returncode == 1
    assert "is read-only for this process" in refused.stderr and "unexpected" not in refused.stderr, refused.stderr
    with Index.open(path) as index:
        assert index.count() == 50
