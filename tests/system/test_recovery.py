"""Crash safety and recovery: SQLite is the source of truth, vectors.faiss is derived.

Simulated crashes between the SQLite commit and the FAISS write, real SIGKILLs of a
writing process, damaged/missing/older vector files (`latent check`, `latent rebuild`,
repair on open), the writer lock, and HNSW tombstones surviving a reopen.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import latent.indexer.vector_index as vx
from latent.cli import cli
from latent.indexer import Index, Record
from latent.indexer.errors import LockTimeout, StorageError
from latent.indexer.lock import WriteLock
from latent.search import search

from conftest import sql, store_generation, word_records
from kill_harness import COMMITTED, latent_command

QUERIES = ("king", "france", "computer", "river", "music")
ROOT = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------------
def vec_path(directory) -> Path:
    return Path(directory) / vx.FILE_NAME


def vec_bytes(directory) -> bytes:
    """The bytes of every vector file: the base, then its segments (a write adds a segment)."""
    files = [vec_path(directory), *sorted(Path(directory).glob("vectors-*.seg"))]
    return b"".join(p.name.encode() + p.read_bytes() for p in files)


def store_keys(directory) -> set[str]:
    return {k for (k,) in sql(directory, "SELECT key FROM items")}


def recorded_generation(directory):
    rows = sql(directory, "SELECT value FROM manifest WHERE key = 'vectors_generation'")
    return json.loads(rows[0][0]) if rows else None


def results(index, queries=QUERIES, k=10):
    return {q: [(h.key, round(h.score, 4)) for h in search(index, q, k=k)] for q in queries}


def all_keys(index, query="the"):
    """Every key search can return: k = the whole index."""
    n = index.count()
    return [h.key for h in search(index, query, k=max(n, 1))]


def assert_consistent(directory):
    """A fresh Index reports ok, and FAISS ids == SQLite ids (same count, no duplicates)."""
    with Index.open(directory) as index:
        report = index.check()
        assert report["ok"], report["problems"]
        vindex = index.vectors
        live = index.store.ids()
        assert np.array_equal(vindex.ids(), live)
        assert len(vindex.ids()) == index.store.count() == report["count"]


def header_of(directory) -> tuple[int, bytes]:
    """(length, JSON) of the header of the base vectors.faiss."""
    raw = vec_path(directory).read_bytes()
    start = len(raw) - 12 - struct.unpack("<I", raw[-12:-8])[0]
    return len(raw) - 12 - start, raw[start:-12]


def run_cli(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# -- 1. crash between the SQLite commit and the FAISS write --------------------------------------------------
def _crash_in_save(self, directory, generation, **kwargs):
    raise OSError("simulated crash before vectors.faiss was written")


def _crash_in_replace(src, dst):
    raise OSError("simulated crash after the temporary file was fsynced, before the rename")


@pytest.fixture(params=["save", "rename"])
def crash(request, monkeypatch):
    """Arm a crash of the vector index save: before anything is written, or at the rename."""

    def arm():
        if request.param == "save":
            monkeypatch.setattr(vx.VectorIndex, "save", _crash_in_save)
        else:
            monkeypatch.setattr(vx.os, "replace", _crash_in_replace)

    arm.kind = request.param
    return arm


def test_crash_after_commit_before_faiss_write_add_is_caught_up(make_word_index, glove_words, crash, monkeypatch):
    index = make_word_index(n=1500)
    directory = index.directory
    old_words = glove_words[100:1600]
    new_words = glove_words[3000:3120]
    before = vec_bytes(directory)
    gen_before = store_generation(directory)

    crash()
    with pytest.raises(StorageError, match="simulated crash"):
        index.add(word_records(new_words), batch_size=40)  # three committed batches, then the save fails
    index.close()
    monkeypatch.undo()

    # the store has the rows; the file is untouched (no temp file either); the lock was released
    assert set(new_words) <= store_keys(directory)
    assert store_generation(directory) == gen_before + 3
    assert vec_bytes(directory) == before
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []
    probe = WriteLock(directory, timeout=0)
    assert probe.try_acquire()
    probe.release()

    # check notes the file is behind (not damage: opening catches it up) and changes nothing
    with Index.open(directory) as fresh:
        report = fresh.check()
    assert report["ok"], report["problems"]
    assert any("behind the store" in n for n in report["notes"]), report["notes"]
    assert report["generation"] == gen_before + 3 and report["vectors_generation"] == gen_before
    assert vec_bytes(directory) == before
    assert recorded_generation(directory) == gen_before

    # opening catches up from the store, finds the new words, persists the repair
    with Index.open(directory) as reopened:
        for word in new_words[::7]:
            hits = search(reopened, word, k=3)
            assert hits[0].key == word and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert reopened.recovered and "caught the vector index up" in reopened.recovered
        assert f"from generation {gen_before} to {gen_before + 3}" in reopened.recovered
        keys = all_keys(reopened)
    assert sorted(keys) == sorted(old_words + new_words)
    assert vec_bytes(directory) != before
    assert recorded_generation(directory) == gen_before + 3
    assert_consistent(directory)
    with Index.open(directory) as again:  # nothing left to repair
        _ = again.vectors
        assert again.recovered is None


def test_crash_after_commit_deletes_upserts_and_metadata_are_caught_up(make_word_index, glove_words, crash,
                                                                       monkeypatch):
    index = make_word_index(n=1500)
    directory = index.directory
    words = glove_words[100:1600]
    before = vec_bytes(directory)
    gen_before = store_generation(directory)
    with Index.open(directory) as ref:
        king_before = [h.key for h in search(ref, "king", k=20)]

    deleted = list(dict.fromkeys(king_before[1:8] + words[500:540]))  # neighbours of "king" and others
    upserted = {words[10]: "zanzibar", words[11]: "kilimanjaro", words[12]: "timbuktu"}  # key -> new text
    meta_key = words[20]
    assert not set(upserted.values()) & set(words)
    assert not set(deleted) & (set(upserted) | {meta_key})

    crash()
    with pytest.raises(StorageError, match="simulated crash"):
        index.delete(deleted + ["no-such-key"])
    with pytest.raises(StorageError, match="simulated crash"):
        index.add([Record(text=t, key=k, kind="word") for k, t in upserted.items()]
                  + [Record(text=meta_key, key=meta_key, kind="word", metadata={"v": 2})])
    with pytest.raises(StorageError, match="simulated crash"):  # an upserted key upserted again, a deleted key re-added
        index.add([Record(text="serengeti", key=words[10], kind="word"),
                   Record(text=deleted[-1], key=deleted[-1], kind="word")])
    index.close()
    monkeypatch.undo()
    assert vec_bytes(directory) == before
    assert store_generation(directory) == gen_before + 3

    with Index.open(directory) as fresh:
        report = fresh.check()
    assert report["ok"] and any("behind the store" in n for n in report["notes"])
    assert vec_bytes(directory) == before

    with Index.open(directory) as reopened:
        keys = all_keys(reopened, "king")
        assert reopened.recovered and "caught the vector index up" in reopened.recovered
        gone = set(deleted[:-1])
        assert not gone & set(keys), "deleted keys came back after recovery"
        assert len(keys) == len(set(keys)) == reopened.count() == 1500 - len(gone)
        assert not gone & {h.key for h in search(reopened, "king", k=50)}
        for text in ("zanzibar", "kilimanjaro", "timbuktu", "serengeti"):
            top = search(reopened, text, k=1)[0]
            if text == "zanzibar":  # replaced again by "serengeti": the old vector is gone
                assert top.text != "zanzibar"
                continue
            expected_key = {v: k for k, v in upserted.items()}.get(text, words[10])
            assert (top.key, top.text) == (expected_key, text)
            assert top.score == pytest.approx(1.0, abs=1e-5)
        # the old vectors of upserted keys are not found any more
        for key in upserted:
            assert search(reopened, key, k=1)[0].key != key
        assert search(reopened, deleted[-1], k=1)[0].key == deleted[-1]
        assert search(reopened, meta_key, k=1)[0].metadata == {"v": 2}
    assert_consistent(directory)


# -- 2. a real SIGKILL of a writing process ---------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    from latent.indexer import Index, Record
    from latent.indexer.encoders.glove import load_glove

    directory, start, stop, batch, chunk = sys.argv[1], *map(int, sys.argv[2:6])
    words = load_glove()[0]
    index = Index.open(directory)
    done = start

    def progress(stage, n, total):
        global done
        if stage == "add" and n:  # called after each batch's transaction committed
            done += n
            print(index.store.generation(), done, flush=True)

    for lo in range(start, stop, chunk):  # several adds: a kill can also land in a save
        records = [Record(text=w, key=w, kind="word") for w in words[lo:min(lo + chunk, stop)]]
        index.add(records, batch_size=batch, progress=progress)
    print("finished", flush=True)
""")


def test_sigkilled_writer_loses_nothing_committed(tmp_path, glove_words):
    directory = tmp_path / "killed"
    Index.create(directory, encoder="glove", index_type="flat").close()
    env = {**os.environ, "LATENT_LOCK_TIMEOUT": "5"}
    per_run, batch, chunk = 4000, 20, 200
    committed_words: set[str] = set()
    start = 100
    for run, (after_batches, jitter) in enumerate([(1, 0.0), (5, 0.002), (17, 0.0), (40, 0.005), (80, 0.001)]):
        stop = start + per_run
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(start), str(stop),
                                  str(batch), str(chunk)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=ROOT, env=env)
        lines = []
        watchdog = threading.Timer(60, child.kill)  # never hang the suite on a stuck child
        watchdog.start()
        try:
            while len(lines) < after_batches:
                line = child.stdout.readline()
                assert line, f"child ended early: {child.stderr.read()}"
                lines.append(line)
            time.sleep(jitter)
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=30)
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
        lines += out.splitlines()
        assert child.returncode == -signal.SIGKILL, f"run {run}: the child was not killed mid-way"
        assert "finished" not in lines
        reported = [tuple(map(int, line.split())) for line in lines]
        assert len(reported) >= after_batches
        generations = [g for g, _ in reported]
        assert generations == sorted(set(generations))
        committed_words |= set(glove_words[start:reported[-1][1]])

        # before anyone repairs it, the file may be stale but is never damaged (atomic save)
        with Index.open(directory) as index:
            report = index.check()
        assert report["ok"], report["problems"]
        assert report["generation"] >= generations[-1]

        with Index.open(directory) as index:
            _ = index.vectors  # opening repairs (catches up) and saves
            report = index.check()
            assert report["ok"], report["problems"]
            assert index.vectors.ntotal == index.store.count() == report["count"]
            assert np.array_equal(index.vectors.ids(), index.store.ids())
            keys = store_keys(directory)
            assert committed_words <= keys, f"run {run}: committed batches lost"
            assert keys <= set(glove_words[100:stop])
            newest = glove_words[reported[-1][1] - 1]
            assert search(index, newest, k=1)[0].key == newest
        committed_words = keys
        start = stop  # the next run adds fresh words to the same, recovered index
    assert_consistent(directory)


INTERRUPT_AFTER_BATCHES = 40


def test_ctrl_c_ends_a_long_add_within_5_s_and_keeps_every_committed_batch(tmp_path, glove_words):
    """Ctrl-C (SIGINT) during a long `latent add` (issue "Reliability, round 2", finding 8): the
    command ends within 5 s, with a non-zero status and a message saying the vectors file
    catches up on the next open, instead of first rebuilding and tuning the whole vector index
    (here: HNSW with a recall target, untuned until the add ends) and saving it. Every batch it
    reported as committed is in the store, and `latent check` passes before and after reopening."""
    directory = tmp_path / "interrupted"
    Index.create(directory, encoder="glove", index_type="hnsw", target_recall=0.95).close()
    words = glove_words[100:200_100]
    source = tmp_path / "words.txt"
    source.write_text("\n".join(words) + "\n", encoding="utf-8")
    env = {**os.environ, "LATENT_SAVE_EVERY_S": "0.5", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([*latent_command(), "add", str(directory), str(source), "--format", "words", "-v",
                              "--batch-size", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, env=env,
                             # a shell's background job ignores SIGINT, and a child inherits that: undo it
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(300, child.kill)  # never hang the suite on a stuck child
    watchdog.start()
    early: list[str] = []
    try:
        while len(COMMITTED.findall("".join(early))) < INTERRUPT_AFTER_BATCHES:
            line = child.stderr.readline()
            assert line, f"the add ended before {INTERRUPT_AFTER_BATCHES} batches: {''.join(early)[-2000:]}"
            early.append(line)
        child.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        out, err = child.communicate(timeout=120)
        latency = time.monotonic() - interrupted
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    err = "".join(early) + err
    print(f"Ctrl-C latency {latency:.2f} s")
    assert child.returncode == 130, (child.returncode, err[-2000:])
    assert latency < 5, f"Ctrl-C took {latency:.1f} s"
    assert "Interrupted; every batch reported as committed is kept" in err and "next opened" in err, err[-2000:]
    reported = [(int(g), int(n)) for g, n in COMMITTED.findall(err)]
    assert len(reported) >= INTERRUPT_AFTER_BATCHES
    committed = sum(n for _, n in reported)  # batches commit in input order
    keys = store_keys(directory)
    assert set(words[:committed]) <= keys <= set(words), "a committed batch was lost"

    result = CliRunner().invoke(cli, ["check", str(directory), "--json"])  # before anything repairs it
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"], result.output
    with Index.open(directory) as index:
        assert np.array_equal(np.sort(index.vectors.ids()), index.ids())  # caught up on open
        assert index.check()["ok"], index.check()
        newest = words[committed - 1]
        assert search(index, newest, k=1)[0].key == newest


KILL_AT_RENAME = textwrap.dedent("""
    import os, signal, sys
    from latent.indexer import Index, Record

    index = Index.open(sys.argv[1])

    def die(src, dst):  # the temporary vectors file is written and fsynced: die before the rename
        print("dying", src, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    os.replace = die
    index.add([Record(text=w, key=w, kind="word") for w in sys.argv[2:]], batch_size=5)
    print("finished", flush=True)
""")


def _kill_during_save(directory, words) -> str:
    child = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(directory), *words], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.startswith("dying") and "finished" not in child.stdout
    return child.stdout.split()[1]


def test_sigkill_in_the_middle_of_a_save_leaves_the_old_file(make_word_index, glove_words):
    index = make_word_index(n=500)
    directory = index.directory
    index.close()
    before, gen_before = vec_bytes(directory), store_generation(directory)
    new_words = glove_words[3000:3020]
    _kill_during_save(directory, new_words)

    assert set(new_words) <= store_keys(directory)
    assert store_generation(directory) == gen_before + 4
    assert vec_bytes(directory) == before
    with Index.open(directory) as index:
        report = index.check()
    assert report["ok"] and any("behind the store" in n for n in report["notes"]), report
    with Index.open(directory) as index:
        for word in new_words[::4]:
            assert search(index, word, k=1)[0].key == word
        assert "caught the vector index up" in index.recovered
    assert_consistent(directory)


def test_temp_file_of_a_killed_save_is_cleaned_up(make_word_index, glove_words):
    index = make_word_index(n=500)
    directory = index.directory
    index.close()
    leftover = Path(_kill_during_save(directory, glove_words[3000:3020]))
    assert leftover.parent == directory and leftover.exists()
    with Index.open(directory) as index:
        _ = index.vectors  # repaired and saved
        index.add(word_records(glove_words[3100:3110]))  # saved again
        index.rebuild()
    assert_consistent(directory)
    assert sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name) == []


# -- 3. latent check / rebuild on a damaged vectors.faiss ------------------------------------------------------
@pytest.fixture
def damaged_setup(make_word_index, glove_words):
    """A flat word index at generation 3 (add, add, delete), compacted so that its base
    vectors.faiss holds everything, with the base of generation 1 kept."""
    index = make_word_index(n=1500)
    directory = index.directory
    index.compact()
    old_copy = vec_path(directory).read_bytes()
    index.add(word_records(glove_words[2000:2300]))
    index.delete(glove_words[100:120])
    index.compact()
    index.close()
    assert store_generation(directory) == 3
    assert not list(directory.glob("vectors-*.seg"))
    with Index.open(directory) as ref:
        expected = results(ref)
    return directory, old_copy, expected


# The file: FAISS bytes, removed ids, JSON header, its length (u32), MAGIC2 (see vector_index.py).
def _header_start(raw: bytes) -> int:
    return len(raw) - 12 - struct.unpack("<I", raw[-12:-8])[0]


def _flip(offset_of, mask=0xFF):
    def damage(raw: bytes, old: bytes) -> bytes:
        pos = offset_of(raw, _header_start(raw))
        out = bytearray(raw)
        out[pos] ^= mask
        return bytes(out)
    return damage


def _in_header(field, mask, after=0):
    def offset(raw, start):
        return start + raw[start:].index(field) + after
    return _flip(offset, mask)


TRUNCATED = r"not a latent vector index file \(or is truncated\)"
DAMAGES = {
    "deleted": (None, r"is missing"),
    "truncated-empty": (lambda raw, old: b"", r"not a latent vector index file"),
    "truncated-in-magic": (lambda raw, old: raw[:-5], TRUNCATED),
    "truncated-in-header": (lambda raw, old: raw[:_header_start(raw) + 20], TRUNCATED),
    "truncated-payload-half": (lambda raw, old: raw[:len(raw) // 2], TRUNCATED),
    "truncated-last-byte": (lambda raw, old: raw[:-1], TRUNCATED),
    "flip-magic": (_flip(lambda raw, h: len(raw) - 1), r"not a latent vector index file"),
    "flip-header-length-low": (_flip(lambda raw, h: len(raw) - 12), r"damaged header"),
    "flip-header-length-high": (_flip(lambda raw, h: len(raw) - 9), r"damaged header"),
    "flip-header-brace": (_flip(lambda raw, h: h), r"damaged header"),
    "flip-payload-first": (_flip(lambda raw, h: 0), r"checksum mismatch"),
    "flip-payload-middle": (_flip(lambda raw, h: h // 2), r"checksum mismatch"),
    "flip-payload-bit": (_flip(lambda raw, h: h - 1000, 0x01), r"checksum mismatch"),
    "flip-last-payload-byte": (_flip(lambda raw, h: h - 1), r"checksum mismatch"),
    "flip-header-ntotal": (_in_header(b'"ntotal": ', 0x01, len(b'"ntotal": ') + 1), r"checksum"),  # 1780->1680
    "flip-header-generation-up": (_in_header(b'"generation": ', 0x04, len(b'"generation": ')), r"checksum"),  # 3 -> 7
    "older-copy": (lambda raw, old: old, r"older \(generation 1\) than the last one written .*replaced by an older copy"),
}

# The header is covered by the checksum too: a bit flip that keeps its JSON valid is caught.
DAMAGES.update({
    "flip-header-generation-down": (_in_header(b'"generation": ', 0x02, len(b'"generation": ')), r"checksum"),
    "flip-header-key-name": (_in_header(b'"tombstones"', 0x20, 1), r"damaged header"),
    "flip-header-dim": (_in_header(b'"dim": ', 0x02, len(b'"dim": ')), r"checksum"),
})

DAMAGE_PARAMS = [pytest.param(name, fn, pattern, id=name) for name, (fn, pattern) in DAMAGES.items()]


def _apply(directory, damage, old_copy):
    path = vec_path(directory)
    if damage is None:
        path.unlink()
        return None
    path.write_bytes(damage(path.read_bytes(), old_copy))
    return vec_bytes(directory)


def test_check_passes_on_healthy_index(damaged_setup):
    directory, _, _ = damaged_setup
    before = vec_bytes(directory)
    result = run_cli("check", directory)
    assert result.exit_code == 0, result.output
    assert re.match(r"OK: 1780 items, generation 3, SQLite ok", result.stdout)
    result = run_cli("check", directory, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True
    assert vec_bytes(directory) == before


@pytest.mark.parametrize("name, damage, pattern", DAMAGE_PARAMS)
def test_damaged_vectors_file_is_reported_survived_and_rebuilt(damaged_setup, name, damage, pattern):
    directory, old_copy, expected = damaged_setup
    damaged = _apply(directory, damage, old_copy)

    # `latent check` exits 1, names the problem, changes nothing
    result = run_cli("check", directory)
    assert result.exit_code == 1, result.output
    assert re.search(pattern, result.stderr), result.stderr
    assert result.stderr.startswith("Problem: ")
    assert (vec_bytes(directory) if damaged is not None else None) == damaged
    with Index.open(directory) as index:
        assert not index.check()["ok"]

    # opening never crashes: with a writer holding the lock the repair stays in memory
    with WriteLock(directory, timeout=0):
        with Index.open(directory) as index:
            assert results(index) == expected
            assert sorted(all_keys(index)) == sorted(store_keys(directory))
            assert index.recovered
        assert (vec_bytes(directory) if vec_path(directory).exists() else None) == damaged

    # `latent rebuild` rewrites it: check passes, results are those from before the damage
    result = run_cli("rebuild", directory)
    assert result.exit_code == 0, result.output
    assert "Rebuilt" in result.stdout and "generation 3" in result.stdout
    result = run_cli("check", directory)
    assert result.exit_code == 0, result.output + result.stderr
    result = run_cli("search", directory, "king", "--json", "-k", "10")
    assert result.exit_code == 0
    hits = json.loads(result.stdout)["hits"]
    assert [h["key"] for h in hits] == [key for key, _ in expected["king"]]
    assert [h["score"] for h in hits] == pytest.approx([score for _, score in expected["king"]], abs=1e-3)
    with Index.open(directory) as index:
        assert results(index) == expected
    assert_consistent(directory)


@pytest.mark.parametrize("name, damage, pattern", DAMAGE_PARAMS)
def test_opening_a_damaged_index_repairs_and_saves_it(damaged_setup, name, damage, pattern):
    directory, old_copy, expected = damaged_setup
    _apply(directory, damage, old_copy)
    with Index.open(directory) as index:  # lock free: the repair is saved
        assert results(index) == expected
        assert index.recovered
    assert recorded_generation(directory) == 3
    assert_consistent(directory)
    with Index.open(directory) as index:
        assert results(index) == expected
        assert index.recovered is None


# -- 4. the writer lock --------------------------------------------------------------------------------------
def test_held_lock_times_out_second_writer_and_writes_nothing(make_word_index, glove_words, monkeypatch):
    index = make_word_index(n=500)
    directory = index.directory
    index.close()
    monkeypatch.setenv("LATENT_LOCK_TIMEOUT", "0.5")
    file_before, gen_before, keys_before = vec_bytes(directory), store_generation(directory), store_keys(directory)
    with Index.open(directory) as ref:
        expected = results(ref)

    holder = WriteLock(directory).acquire()
    try:
        writer = Index.open(directory)
        for attempt in (lambda: writer.add(word_records(glove_words[3000:3010])),
                        lambda: writer.delete(glove_words[100:105]),
                        lambda: writer.add_vectors(["v"], np.ones((1, 50), np.float32)),
                        writer.rebuild):
            started = time.monotonic()
            with pytest.raises(LockTimeout, match="locked") as err:
                attempt()
            elapsed = time.monotonic() - started
            assert 0.45 <= elapsed < 3.0
            assert f"pid {os.getpid()}" in str(err.value)
        writer.close()
        assert (vec_bytes(directory), store_generation(directory), store_keys(directory)) == \
               (file_before, gen_before, keys_before)

        # readers are not blocked by the held lock (one that waited for it would take 5 s or fail)
        monkeypatch.setenv("LATENT_LOCK_TIMEOUT", "5")
        started = time.monotonic()
        with Index.open(directory) as reader:
            assert results(reader) == expected
            assert reader.check()["ok"]
        assert time.monotonic() - started < 2.5
    finally:
        holder.release()

    with Index.open(directory) as writer:  # released: the next writer gets through
        writer.add(word_records(glove_words[3000:3010]))
        assert search(writer, glove_words[3005], k=1)[0].key == glove_words[3005]


def test_reader_catches_up_in_memory_while_writer_holds_lock(make_word_index, glove_words, monkeypatch):
    index = make_word_index(n=500)
    directory = index.directory
    monkeypatch.setattr(vx.VectorIndex, "save", _crash_in_save)
    with pytest.raises(StorageError):
        index.add(word_records(glove_words[3000:3050]))
    index.close()
    monkeypatch.undo()
    stale = vec_bytes(directory)
    with WriteLock(directory, timeout=0):
        with Index.open(directory) as reader:
            assert search(reader, glove_words[3020], k=1)[0].key == glove_words[3020]
            assert "caught the vector index up" in reader.recovered
        assert vec_bytes(directory) == stale  # a reader never saves while a writer holds the lock
    with Index.open(directory) as reader:
        _ = reader.vectors
    assert_consistent(directory)


HOLDER = textwrap.dedent("""
    import sys
    from latent.indexer.lock import WriteLock
    lock = WriteLock(sys.argv[1], timeout=5).acquire()
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
""")


def test_cli_reports_lock_held_by_another_process(make_word_index, glove_words, tmp_path):
    index = make_word_index(n=500)
    directory = index.directory
    index.close()
    words_file = tmp_path / "new.txt"
    words_file.write_text("\n".join(glove_words[3000:3020]) + "\n")
    gen_before = store_generation(directory)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {"LATENT_LOCK_TIMEOUT": "0.5"}
        for args in (["add", directory, words_file, "--format", "words"], ["delete", directory, "king"],
                     ["rebuild", directory]):
            started = time.monotonic()
            result = run_cli(*args, env=env)
            assert time.monotonic() - started < 5
            assert result.exit_code == 1, result.output
            lines = error_lines(result)
            assert len(lines) == 1, lines
            assert lines[0].startswith("Error: ") and "locked" in lines[0] and f"pid {holder.pid}" in lines[0]
            assert "Traceback" not in result.output
        assert store_generation(directory) == gen_before
        # readers go on
        result = run_cli("search", directory, "city", "-k", "3", env=env)
        assert result.exit_code == 0 and re.search(r"^\s+1\s+1\.0000\s+city$", result.stdout, re.M), result.output
        assert run_cli("check", directory, env=env).exit_code == 0
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    result = run_cli("add", directory, words_file, "--format", "words")
    assert result.exit_code == 0, result.output
    assert store_generation(directory) == gen_before + 1


# -- 5. HNSW deletions are tombstones saved in the file -------------------------------------------------------
def test_hnsw_deleted_keys_never_come_back_after_reopen(make_word_index, glove_words):
    index = make_word_index(n=2000, index_type="hnsw")
    directory = index.directory
    index.compact()  # the words in the HNSW base (new items wait in an exact segment until a merge)
    assert index.vectors.factory == "HNSW32" and index.vectors.base.ntotal == 2000
    near = [h.key for h in search(index, "king", k=30)][1:]
    deleted = list(dict.fromkeys(near + glove_words[600:650]))
    live = 2000 - len(deleted)
    count, missing = index.delete(deleted)
    assert (count, missing) == (len(deleted), [])
    index.compact()  # the deletions, a segment's tombstones, merge into the HNSW base: hidden there
    index.close()

    length, header = header_of(directory)
    facts = json.loads(header)
    assert facts["tombstones"] == len(deleted) and facts["ntotal"] == 2000  # hidden, not removed

    with Index.open(directory) as fresh:
        assert len(fresh.vectors.tombstones) == len(deleted)
        assert fresh.recovered is None  # the saved file was current: nothing to repair
        gone = set(deleted)
        for query in ["king"] + deleted[::10]:
            keys = [h.key for h in search(fresh, query, k=2000)]
            assert not gone & set(keys), f"deleted keys came back for {query!r}"
            assert len(keys) == len(set(keys))
        assert len(search(fresh, "king", k=live)) > 0.95 * live
        assert fresh.check()["ok"]
    assert_consistent(directory)


def test_hnsw_deletions_survive_a_crash_and_a_purging_rebuild(make_word_index, glove_words, monkeypatch):
    index = make_word_index(n=2000, index_type="hnsw")
    directory = index.directory
    first = glove_words[200:260]
    monkeypatch.setattr(vx.VectorIndex, "save", _crash_in_save)
    with pytest.raises(StorageError):
        index.delete(first)  # committed, never saved
    index.close()
    monkeypatch.undo()

    with Index.open(directory) as fresh:  # catch-up turns the logged deletions into tombstones
        keys = set(all_keys(fresh, "king"))
        assert not keys & set(first)
        assert "caught the vector index up" in fresh.recovered
    with Index.open(directory) as fresh:  # saved as a segment's tombstones
        assert len(fresh.vectors.tombstones) == len(first) and fresh.recovered is None
    assert_consistent(directory)

    # re-adding a deleted key gives it a new id: found once
    with Index.open(directory) as writer:
        writer.add(word_records(first[:1]))
    with Index.open(directory) as fresh:
        hits = search(fresh, first[0], k=5)
        assert [h.key for h in hits].count(first[0]) == 1 and hits[0].key == first[0]
    assert_consistent(directory)

    # over 1000 tombstones: the write rebuilds HNSW and purges them
    many = glove_words[700:1800]
    with Index.open(directory) as writer:
        writer.delete(many)
    facts = json.loads(header_of(directory)[1])
    assert facts["tombstones"] == 0 and facts["ntotal"] == 2000 - len(first) + 1 - len(many)
    with Index.open(directory) as fresh:
        keys = set(all_keys(fresh, "king"))
        assert not keys & (set(many) | set(first[1:]))
        assert fresh.check()["ok"]
    assert_consistent(directory)
