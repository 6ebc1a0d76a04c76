"""Corrupt stores: hundreds of random damages to vectors.faiss (bit flips, byte runs,
truncations, junk appended, older copies swapped in, the file deleted), a deleted SQLite
`-wal` with and without unflushed commits, and a damaged latent.db.

Every trial runs in a child process (so a crash or a hang would be seen, not suffered):
opening the index never crashes, the damage is detected by the header checksum or the
generation recorded in SQLite before FAISS parses a byte of it, the vector index is
rebuilt from the store, and search results equal those from before the damage.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import latent.indexer.vector_index as vx
from latent.cli import cli
from latent.indexer import Index
from latent.indexer.errors import IndexCorrupt
from latent.search import similar

from conftest import word_records

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ("king", "france", "computer", "river", "music", "seven")  # all among the indexed words
TRIALS = 300


def results(index) -> dict:
    """The 10 neighbours of some stored items (by their stored vectors: no encoder needed)."""
    return {q: [[h.key, round(h.score, 5)] for h in similar(index, key=q, k=10)] for q in QUERIES}


def damage(raw: bytes, older: list[bytes], rng: random.Random) -> tuple[str, bytes | None]:
    """One random damage of the file's bytes: (what was done, new bytes or None to delete it)."""
    kind = rng.choice(["flip", "flip", "flip-header", "run", "truncate", "truncate", "append", "older", "delete",
                       "zero-tail", "swap-halves"])
    data = bytearray(raw)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "flip-header":
        data[rng.randrange(min(len(data), 200))] ^= 1 << rng.randrange(8)
    elif kind == "run":
        start = rng.randrange(len(data))
        data[start:start + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(64))[: len(data) - start]
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 100)))
    elif kind == "older":
        return kind, rng.choice(older)
    elif kind == "delete":
        return kind, None
    elif kind == "zero-tail":
        cut = rng.randrange(len(data))
        data[cut:] = bytes(len(data) - cut)
    else:
        half = len(data) // 2
        data = data[half:] + data[:half]
    if bytes(data) == raw:  # a damage that changed nothing (a zeroed tail of zeros)
        data = data[:-1]
    return kind, bytes(data)


TRIAL_CHILD = textwrap.dedent("""
    import json, os, random, sys
    sys.path[:0] = ["tests/system", "tests"]
    os.fsync = lambda fd: None  # durability is not what this child tests: keep 300 trials fast
    import faiss
    import test_corruption as t
    from pathlib import Path
    from latent.indexer import Index

    directory, trials, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    healthy = (directory / "vectors.faiss").read_bytes()
    store = (directory / "latent.db").read_bytes()
    older = [Path(p).read_bytes() for p in sys.argv[4:]]
    expected = json.loads((directory / "expected.json").read_text())
    parsed = []
    real = faiss.read_index
    def counting(*args):
        if str(args[0]).endswith("vectors.faiss"):  # the damaged base (segment files are whole)
            parsed.append(1)
        return real(*args)
    faiss.read_index = counting
    rng = random.Random(seed)
    out = []
    for trial in range(trials):
        kind, data = t.damage(healthy, older, rng)
        path = directory / "vectors.faiss"
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        parsed.clear()
        with Index.open(directory) as index:
            report = index.check()
            got = t.results(index)
            recovered = index.recovered
            parsed_damaged = len(parsed)
            after = index.check()
        out.append({"trial": trial, "kind": kind, "check_ok": report["ok"], "problems": report["problems"],
                    "parsed_damaged": parsed_damaged, "recovered": recovered, "equal": got == expected,
                    "ok_after": after["ok"]})
        path.write_bytes(healthy)  # and the store (whose manifest lists the repair's segment) as it was
        for leftover in [*directory.glob("vectors-*.seg"), *directory.glob("latent.db-*")]:
            leftover.unlink()
        (directory / "latent.db").write_bytes(store)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, glove_words):
    """A flat GloVe index after three writes, each compacted (so that the base vectors.faiss holds
    every item), the base files of the earlier generations, and the search results to expect."""
    base = tmp_path_factory.mktemp("corruption")
    directory = base / "idx"
    older = []
    with Index.create(directory, encoder="glove", index_type="flat") as index:
        for lo in range(100, 1900, 600):
            index.add(word_records(glove_words[lo:lo + 600]))
            index.compact()
            copy = base / f"gen-{len(older)}.faiss"
            shutil.copy(directory / vx.FILE_NAME, copy)
            older.append(copy)
        index.delete(glove_words[200:220])
        index.compact()
        expected = results(index)
    (directory / "expected.json").write_text(json.dumps(expected))
    return directory, older, json.loads(json.dumps(expected))


def test_random_damage_to_the_vectors_file_is_detected_and_repaired(healthy, tmp_path):
    directory, older, expected = healthy
    work = tmp_path / "idx"
    shutil.copytree(directory, work)
    child = subprocess.run([sys.executable, "-c", TRIAL_CHILD, str(work), str(TRIALS), "7", *map(str, older)],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    trials = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(trials) == TRIALS
    kinds: dict[str, int] = {}
    for t in trials:
        kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
        what = f"trial {t['trial']} ({t['kind']})"
        assert t["equal"], f"{what}: results differ from before the damage"
        assert t["ok_after"], f"{what}: check fails after reopening"
        if t["kind"] == "older":  # a valid older file: caught up from the store (its generation is in SQLite)
            assert t["parsed_damaged"] == 2  # a valid file: parsed by the check, then by the open
            assert "older copy" in " ".join(t["problems"]) and "caught the vector index up" in t["recovered"]
        else:  # damaged or missing: detected before FAISS parses it, rebuilt from the store
            assert t["parsed_damaged"] == 0, f"{what}: FAISS parsed a damaged file"
            assert not t["check_ok"] and t["problems"], what
            assert t["recovered"] and "rebuilt the vector index" in t["recovered"], what
    print(f"{TRIALS} trials: {dict(sorted(kinds.items()))}")
    assert set(kinds) >= {"flip", "flip-header", "run", "truncate", "append", "older", "delete"}


WAL_CHILD = textwrap.dedent("""
    import os, signal, sys
    from latent.indexer import Index, Record

    from latent.indexer.store import Store

    Store.checkpoint = lambda self: None  # killed before the checkpoint that ends every write
    index = Index.open(sys.argv[1])
    index.store.db.execute("PRAGMA wal_autocheckpoint = 0")  # keep the commits in the -wal file
    index.add([Record(text=w, key=w, kind="word") for w in sys.argv[2:]], batch_size=10)  # commits, then saves
    index.compact()  # a new base vectors.faiss, of the generation the lost -wal holds
    os.kill(os.getpid(), signal.SIGKILL)  # no checkpoint, no close: the commits live only in the -wal
""")


def test_deleted_wal_with_unflushed_commits_rebuilds_from_what_the_store_holds(healthy, tmp_path, glove_words):
    directory, _, expected = healthy
    work = tmp_path / "idx"
    shutil.copytree(directory, work)
    new_words = glove_words[5000:5040]
    child = subprocess.run([sys.executable, "-c", WAL_CHILD, str(work), *new_words], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    wal = work / "latent.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    header, _ = vx.read_header(work / vx.FILE_NAME)
    for suffix in ("-wal", "-shm"):
        (work / f"latent.db{suffix}").unlink(missing_ok=True)

    # the store lost the commits that lived in the -wal; the vectors file is newer than the store
    with Index.open(work) as index:
        report = index.check()
        assert not report["ok"]
        assert any("newer than the store" in p for p in report["problems"]), report["problems"]
        assert header["generation"] > report["generation"]
        assert results(index) == expected  # rebuilt from the store: exactly the state before the child
        assert "rebuilt the vector index" in index.recovered
        assert not set(new_words) & {k for (k,) in index.store.db.execute("SELECT key FROM items").fetchall()}
    with Index.open(work) as index:
        assert index.check()["ok"]
        assert np.array_equal(index.vectors.ids(), index.store.ids())


def test_deleted_wal_after_a_clean_close_changes_nothing(healthy, tmp_path):
    directory, _, expected = healthy
    work = tmp_path / "idx"
    shutil.copytree(directory, work)
    with Index.open(work) as index:
        assert results(index) == expected
    for suffix in ("-wal", "-shm"):
        (work / f"latent.db{suffix}").unlink(missing_ok=True)
    with Index.open(work) as index:
        assert index.check()["ok"]
        assert results(index) == expected
        assert index.recovered is None


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "zeroed-page"])
def test_damaged_database_gives_a_typed_error_not_a_crash(healthy, tmp_path, how):
    directory, _, _ = healthy
    work = tmp_path / "idx"
    shutil.copytree(directory, work)
    db = work / "latent.db"
    raw = db.read_bytes()
    if how == "garbage":
        db.write_bytes(random.Random(1).randbytes(len(raw)))
    elif how == "truncated":
        db.write_bytes(raw[: len(raw) // 3])
    elif how == "empty":
        db.write_bytes(b"")
    else:  # the first page (the schema) zeroed past its header
        db.write_bytes(raw[:100] + bytes(4096 - 100) + raw[4096:])
    for suffix in ("-wal", "-shm"):
        (work / f"latent.db{suffix}").unlink(missing_ok=True)
    for args in (["search", str(work), "king"], ["check", str(work)], ["info", str(work)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (how, args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith(("Error:", "Problem:")), (how, args, result.output)
        assert "Traceback" not in result.output and "unexpected" not in result.stderr, result.stderr
        if lines[-1].startswith("Error:"):
            assert "latent.db" in lines[-1] and "backup" in lines[-1], lines[-1]


def test_damaged_rows_are_reported_and_rebuild_repairs_them(healthy, tmp_path, glove_words):
    directory, _, expected = healthy
    work = tmp_path / "idx"
    shutil.copytree(directory, work)
    conn = sqlite3.connect(work / "latent.db")
    keys = [k for (k,) in conn.execute("SELECT key FROM items ORDER BY id LIMIT 6")]
    with conn:
        of_key = "WHERE id = (SELECT id FROM items WHERE key = ?)"
        conn.execute(f"UPDATE vectors SET vector = substr(vector, 1, 100) {of_key}", [keys[0]])
        conn.execute(f"DELETE FROM vectors {of_key}", [keys[1]])  # lost altogether
        nan = np.full(50, np.nan, np.float32).tobytes()
        conn.execute(f"UPDATE vectors SET vector = ? {of_key}", [nan, keys[2]])
        conn.execute("UPDATE items SET metadata = '{not json' WHERE key = ?", [keys[3]])
    conn.close()
    result = CliRunner().invoke(cli, ["check", str(work)])
    assert result.exit_code == 1
    assert "3 item(s) have damaged, non-finite or zero vectors" in result.stderr, result.stderr
    assert "1 item(s) have metadata that is not a JSON object" in result.stderr
    for key in keys[:4]:
        assert repr(key) in result.stderr
    result = CliRunner().invoke(cli, ["rebuild", str(work)])
    assert result.exit_code == 0, result.output
    assert "re-encoded 3 damaged vector(s)" in result.stdout and "_damaged_metadata" in result.stdout
    with Index.open(work) as index:
        assert index.check()["ok"]
        assert results(index) == expected
        item = index.store.fetch(index.store.ids()[:6].tolist())
        assert {"_damaged_metadata": "{not json"} in [row["metadata"] for row in item.values()]


def test_damaged_vector_without_text_names_the_item_to_delete(healthy, tmp_path):
    directory, _, _ = healthy
    work = tmp_path / "idx"
    shutil.copytree(directory, work)
    conn = sqlite3.connect(work / "latent.db")
    key = conn.execute("SELECT key FROM items ORDER BY id LIMIT 1").fetchone()[0]
    with conn:
        conn.execute("UPDATE vectors SET vector = x'00' WHERE id = (SELECT id FROM items WHERE key = ?)", [key])
        conn.execute("UPDATE items SET text = NULL WHERE key = ?", [key])
    conn.close()
    with Index.open(work) as index:
        with pytest.raises(IndexCorrupt, match=f"no text to re-encode.*{key!r}.*latent delete"):
            index.rebuild()
    assert CliRunner().invoke(cli, ["delete", str(work), key]).exit_code == 0
    with Index.open(work) as index:
        index.rebuild()
        assert index.check()["ok"]


def test_vectors_file_is_never_parsed_when_its_checksum_fails(healthy, tmp_path, monkeypatch):
    directory, _, _ = healthy
    work = tmp_path / "idx"
    shutil.copytree(directory, work)
    path = work / vx.FILE_NAME
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    calls = []
    monkeypatch.setattr(vx.faiss, "deserialize_index", lambda data: calls.append(1))
    monkeypatch.setattr(vx.faiss, "read_index", lambda *args: calls.append(1))
    with pytest.raises(IndexCorrupt, match="checksum"):
        vx.VectorIndex.load(work)
    assert calls == []
    assert os.path.getsize(path) == len(raw)
