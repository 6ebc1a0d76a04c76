"""I/O faults: the vectors file write, the fsync, the rename and the SQLite commit fail
(ENOSPC-style, "database or disk is full") at the 1st, 2nd, ... call, once or for good.

For every command (a three-batch `latent add` saving after each batch, a one-batch `latent add`, `latent delete`,
`latent rebuild`), every operation and every call it makes: the command fails with a
one-line message (no traceback), `vectors.faiss` is byte-identical, the store holds what it
held before plus exactly the batches the message reports as committed (a failed batch
leaves no row), no temporary file is left, and the same command run again succeeds and
leaves a consistent index. A real SQLITE_FULL (PRAGMA max_page_count) is tried too.

Design note: SQLite is the source of truth and commits batch by batch, so when the vectors
file cannot be written after batches were committed, those batches are kept (and the
message says so); the file is left as it was and caught up from the store on the next open.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import latent.indexer.index as index_mod
import latent.indexer.store as store_mod
import latent.indexer.vector_index as vx
from latent.cli import cli
from latent.indexer import Index
from latent.search import search

from conftest import word_records

OPS = ("write", "fsync", "rename", "commit")
COMMIT_ERROR = "database or disk is full"


class Injector:
    """Counts calls of one operation; fails the `at`-th (and, for good, every later one)."""

    def __init__(self, op: str, at: int = 0, for_good: bool = False):
        self.op, self.at, self.for_good = op, at, for_good
        self.calls = 0
        self.failed = 0

    def __call__(self) -> bool:
        self.calls += 1
        fail = self.at and (self.calls == self.at or (self.for_good and self.calls > self.at))
        self.failed += bool(fail)
        return bool(fail)


class _FaultyFile:
    """A file whose write() stores half the bytes and then fails, like a disk that filled up."""

    def __init__(self, f, inject: Injector):
        self._f, self._inject = f, inject

    def write(self, data):
        if self._inject():
            self._f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class _FaultyConnection:
    """A sqlite3 connection whose COMMIT of a write transaction fails with SQLITE_FULL at the
    chosen calls (read transactions, which write nothing, are not counted)."""

    def __init__(self, conn, inject: Injector):
        self._conn, self._inject = conn, inject
        self._changes_at_begin = 0

    def execute(self, sql, *args):
        verb = sql.strip().upper()
        if verb.startswith("BEGIN"):
            self._changes_at_begin = self._conn.total_changes
        elif verb.startswith("COMMIT") and self._conn.total_changes != self._changes_at_begin and self._inject():
            raise sqlite3.OperationalError(COMMIT_ERROR)
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


class SaveLog:
    """The bytes of vectors.faiss after the last save that succeeded (or before any)."""

    def __init__(self, directory: Path):
        self.last_good = (directory / vx.FILE_NAME).read_bytes()
        self.saves = self.failed = 0


def arm(monkeypatch, inject: Injector, command: str = "", log: SaveLog | None = None) -> None:
    if command == "add-3-batches":  # save vectors.faiss after every batch too: faults mid-run
        monkeypatch.setattr(index_mod, "SAVE_EVERY_S", 0.0)
    if log is not None:
        real_save = vx.VectorIndex.save

        def logged_save(self, directory, generation, **kwargs):
            log.saves += 1
            try:
                crc = real_save(self, directory, generation, **kwargs)
            except Exception:
                log.failed += 1
                raise
            log.last_good = (Path(directory) / vx.FILE_NAME).read_bytes()
            return crc

        monkeypatch.setattr(vx.VectorIndex, "save", logged_save)
    if inject.op == "write":
        real_open = open

        def faulty_open(path, mode="r", *args, **kwargs):
            f = real_open(path, mode, *args, **kwargs)
            return _FaultyFile(f, inject) if "w" in mode or "+" in mode else f  # (r+b: the trailer after FAISS bytes)

        monkeypatch.setattr(vx, "open", faulty_open, raising=False)
    elif inject.op in ("fsync", "rename"):
        name = "fsync" if inject.op == "fsync" else "replace"
        real = getattr(os, name)

        def faulty(*args, **kwargs):
            if inject():
                raise OSError(errno.ENOSPC if name == "fsync" else errno.EIO,
                              "No space left on device" if name == "fsync" else "Input/output error")
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, faulty)
    else:
        real_connect = store_mod._connect

        def connect(path):
            db = real_connect(path)
            db.conn = _FaultyConnection(db.conn, inject)
            return db

        monkeypatch.setattr(store_mod, "_connect", connect)


# -- the world the commands run in -------------------------------------------------------------------
BASE_WORDS = slice(100, 700)
NEW_WORDS = slice(3000, 3150)


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, glove_words) -> Path:
    directory = tmp_path_factory.mktemp("faults") / "base"
    with Index.create(directory, encoder="glove", index_type="flat") as index:
        index.add(word_records(glove_words[BASE_WORDS], lambda w, i: {"i": i}))
    return directory


@pytest.fixture(scope="module")
def new_words_file(tmp_path_factory, glove_words) -> Path:
    path = tmp_path_factory.mktemp("faults-input") / "new.txt"
    path.write_text("\n".join(glove_words[NEW_WORDS]) + "\n")
    return path


def rows(directory) -> dict[str, tuple]:
    conn = sqlite3.connect(f"file:{Path(directory) / 'latent.db'}?mode=ro", uri=True)
    try:
        return {k: (kind, text, meta, vec) for k, kind, text, meta, vec in
                conn.execute("SELECT key, kind, text, metadata, vector FROM items LEFT JOIN vectors USING (id)")}
    finally:
        conn.close()


def commands(directory: Path, new_words_file: Path, glove_words) -> dict[str, list[str]]:
    d = str(directory)
    return {
        "add-3-batches": ["add", d, str(new_words_file), "--format", "words", "--batch-size", "50"],
        "add-1-batch": ["add", d, str(new_words_file), "--format", "words", "--batch-size", "500"],
        "delete": ["delete", d, *glove_words[200:230]],
        "rebuild": ["rebuild", d],
    }


def run(args) -> "CliRunner.Result":
    return CliRunner().invoke(cli, args)


def calls_made(tmp_path, base_index, args_of, op, command) -> int:
    """How many times a clean run of the command performs `op`."""
    directory = tmp_path / "count"
    shutil.copytree(base_index, directory)
    inject = Injector(op)
    with pytest.MonkeyPatch.context() as mp:
        arm(mp, inject, command)
        result = run(args_of(directory))
    assert result.exit_code == 0, result.output
    shutil.rmtree(directory)
    return inject.calls


@pytest.mark.parametrize("command", ["add-3-batches", "add-1-batch", "delete", "rebuild"])
@pytest.mark.parametrize("op", OPS)
def test_fault_at_every_call_once_and_for_good(tmp_path, base_index, new_words_file, glove_words, command, op):
    def args_of(directory):
        return commands(directory, new_words_file, glove_words)[command]

    total = calls_made(tmp_path, base_index, args_of, op, command)
    if command == "rebuild" and op == "commit":
        assert total == 1  # the manifest record of the new file
    assert total >= 1, f"{command} never performs {op}"
    tried = 0
    for at in range(1, total + 1):
        for for_good in (False, True):
            directory = tmp_path / f"{op}-{at}-{for_good}"
            shutil.copytree(base_index, directory)
            before_rows = rows(directory)
            inject = Injector(op, at, for_good)
            log = SaveLog(directory)
            with pytest.MonkeyPatch.context() as mp:
                arm(mp, inject, command, log)
                result = run(args_of(directory))
            what = f"{command}, {op} failing at call {at}{' for good' if for_good else ' once'}"
            assert inject.failed, what
            tried += 1

            # a clear one-line message, exit 1
            assert result.exit_code == 1, f"{what}: {result.output}"
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("Error: could not write"), f"{what}: {lines}"
            assert re.search(r"No space left on device|Input/output error|database or disk is full", lines[0]), lines
            assert "Traceback" not in result.output and "unexpected" not in lines[0]

            # vectors.faiss is byte-identical to the last file saved before the failure (the file from
            # before the command, unless a mid-run save succeeded); no temp files; the store lost
            # nothing and half-wrote nothing
            assert (directory / vx.FILE_NAME).read_bytes() == log.last_good, what
            assert log.failed <= 1 and (op == "commit" or log.failed == 1), f"{what}: {log.failed} failed saves"
            if command != "add-3-batches":
                assert log.saves - log.failed == 0, f"{what}: a save succeeded before the failure"
            assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == [], what
            after_rows = rows(directory)
            reported = re.search(r"this run committed (\d+) batches, (\d+) items", lines[0])
            if command.startswith("add"):  # earlier rows untouched; new rows = the batches reported committed
                kept = set(after_rows) - set(before_rows)
                assert {k: after_rows[k] for k in before_rows} == before_rows, what
                expected_new = int(reported.group(2)) if reported else 0
                assert len(kept) == expected_new, f"{what}: {len(kept)} new rows, message: {lines[0]}"
                assert len(kept) % (50 if command == "add-3-batches" else 150) == 0, what  # whole batches only
                assert kept <= set(glove_words[NEW_WORDS])
            elif command == "delete" and "deletion of 30 items was committed" in lines[0]:
                assert after_rows == {k: v for k, v in before_rows.items() if k not in glove_words[200:230]}, what
            else:
                assert after_rows == before_rows, what

            # the next run succeeds and the index is consistent
            again = run(args_of(directory))
            assert again.exit_code == 0, f"{what}, then the clean run: {again.output}"
            with Index.open(directory) as index:
                report = index.check()
                assert report["ok"], (what, report)
                assert np.array_equal(index.vectors.ids(), index.store.ids())
                if command.startswith("add"):
                    assert set(glove_words[NEW_WORDS]) <= set(rows(directory))
                    word = glove_words[NEW_WORDS][-1]
                    assert search(index, word, k=1)[0].key == word
                if command == "delete":
                    assert not set(glove_words[200:230]) & set(rows(directory))
            shutil.rmtree(directory)
    print(f"{command}: {op} failed at each of {total} calls, once and for good: {tried} faults")
    assert tried == 2 * total


def test_real_sqlite_full_rolls_the_batch_back(tmp_path, base_index, new_words_file):
    """Not a simulated error: SQLite itself runs out of pages (PRAGMA max_page_count)."""
    directory = tmp_path / "full"
    shutil.copytree(base_index, directory)
    before_file = (directory / vx.FILE_NAME).read_bytes()
    before_rows = rows(directory)
    real_connect = store_mod._connect

    def connect(path):
        db = real_connect(path)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 2}")
        return db

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "_connect", connect)
        result = run(["add", str(directory), str(new_words_file), "--format", "words", "--batch-size", "500"])
    assert result.exit_code == 1
    assert "database or disk is full" in result.stderr and "rolled back" in result.stderr, result.stderr
    assert rows(directory) == before_rows
    assert (directory / vx.FILE_NAME).read_bytes() == before_file
    again = run(["add", str(directory), str(new_words_file), "--format", "words"])
    assert again.exit_code == 0, again.output
    with Index.open(directory) as index:
        assert index.check()["ok"]
        assert index.count() == len(before_rows) + 150
