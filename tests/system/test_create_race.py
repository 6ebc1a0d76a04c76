"""Two processes creating an index in the same fresh directory at the same moment: exactly
one wins, the other gets IndexExists, and the winner's committed items stay readable
(issue "Reliability, round 2", finding 1: the manifest was overwritten to another dim)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from latent.indexer import Index
from latent.indexer.errors import IndexExists

CHILD = r"""
import sys, time
import numpy as np
from latent.indexer import Index
from latent.indexer.errors import IndexExists
directory, dim = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()  # both children are past their imports: go
try:
    index = Index.create(directory, encoder=f"vectors:{dim}", index_type="flat")
except IndexExists as e:
    print("exists", e)
    sys.exit(0)
rng = np.random.default_rng(dim)
index.add_vectors([f"k{i}" for i in range(100)], rng.standard_normal((100, dim)).astype(np.float32))
print("created", dim)
"""


def test_two_concurrent_creates_one_wins(tmp_path):
    for run in range(10):
        directory = tmp_path / f"race-{run}"
        children = [subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(dim)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for dim in (8, 16)]
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in children:  # released together
            child.stdin.write("go\n")
            child.stdin.flush()
        outs = [child.communicate(timeout=120) for child in children]
        for child, (out, err) in zip(children, outs):
            assert child.returncode == 0, err
        verdicts = [out.split()[0] for out, _ in outs]
        assert sorted(verdicts) == ["created", "exists"], outs
        winner = (8, 16)[verdicts.index("created")]
        index = Index.open(directory)
        assert index.dim == winner and index.count() == 100
        assert index.check()["ok"], index.check()
        index.close()


def test_create_takes_over_the_empty_file_of_a_killed_create(tmp_path):
    """A create killed before its one commit (schema and manifest together) leaves an empty
    latent.db: a later create takes it over, while a database with tables is never replaced."""
    leftover = tmp_path / "leftover"
    leftover.mkdir()
    sqlite3.connect(str(leftover / "latent.db")).execute("PRAGMA journal_mode = wal").fetchall()
    with Index.create(leftover, encoder="vectors:8", index_type="flat") as index:
        assert index.count() == 0 and index.check()["ok"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(str(foreign / "latent.db"))
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(IndexExists):
        Index.create(foreign, encoder="vectors:8")
