"""One Index object shared by threads (as `latent serve` shares its indexes with its worker threads).

A writer thread adds GloVe words in batches of 500 (each batch tagged with its number) and
deletes whole old batches, while reader threads search, filter and count on the SAME object,
on flat and HNSW; then two writer threads on one object. Every reader observation must be one
committed generation: whole batches only, no duplicates, never more hits than items, and a
batch the writers reported committed (and not yet deleted) is found. Every writer report must
be true: each batch reported committed is in the store, none reported failed is. Afterwards
check() passes and a reopened index holds exactly the committed items. Also: a thread cannot
write inside its own snapshot (refused, not a deadlock), a second writer thread waits for the
first (and times out with a clear error), and each thread's connection closes with its thread.

Threads that hang fail the test (joins are bounded); every thread is a daemon.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import traceback
from collections import Counter

import numpy as np
import pytest
from conftest import sql, word_records

from latent.indexer import Index, LatentError
from latent.indexer.errors import LockTimeout
from latent.search.query import search_vectors

BATCH = 500
WINDOW = 8  # batches a writer keeps; older ones it deletes (so that one search can return every item)
RUN_S = 2.5  # how long the writers write
ALL = 15_000  # k of the searches that return every item: more than (2 + 2 * (WINDOW + 1)) * BATCH


class Log:
    """What the writers reported: batches committed, batches being (or already) deleted, failures."""

    def __init__(self, plan: dict[int, list[str]]):
        self.plan = plan  # batch -> its words
        self.batch_of = {w: b for b, words in plan.items() for w in words}
        self.lock = threading.Lock()
        self.committed: list[int] = []
        self.deleting: set[int] = set()
        self.failed: list[tuple[int, str]] = []
        self.errors: list[str] = []  # any thread's unexpected exception or broken expectation

    def live(self) -> list[int]:
        with self.lock:
            return [b for b in self.committed if b not in self.deleting]


def records(log: Log, b: int):
    return word_records(log.plan[b], lambda w, i: {"batch": b})


def writer(index: Index, log: Log, batches: list[int], deadline: float) -> None:
    mine: list[int] = []
    try:
        for b in batches:
            if time.monotonic() > deadline:
                return
            try:
                report = index.add(records(log, b), batch_size=BATCH)
            except Exception as e:  # noqa: BLE001 - reported, then checked against the store
                with log.lock:
                    log.failed.append((b, repr(e)))
                continue
            if (report.added, len(report.committed), report.skipped) != (BATCH, 1, 0):
                log.errors.append(f"batch {b}: {report.as_dict()}")
            with log.lock:
                log.committed.append(b)
            mine.append(b)
            if len(mine) > WINDOW:
                old = mine.pop(0)
                with log.lock:
                    log.deleting.add(old)
                deleted, missing = index.delete(log.plan[old])
                if (deleted, missing) != (BATCH, []):
                    log.errors.append(f"deleting batch {old}: {deleted} deleted, missing {missing[:5]}")
    except Exception:  # noqa: BLE001
        log.errors.append(traceback.format_exc())


def observe(index: Index, log: Log, rng: np.random.Generator) -> None:
    """One round of reads; AssertionError when one is not a committed generation."""
    # every item: whole batches, each key once, each with its own batch's metadata
    hits = search_vectors(index, rng.standard_normal(50), k=ALL)[0]
    keys = [h.key for h in hits]
    assert len(set(keys)) == len(keys), f"{len(keys) - len(set(keys))} duplicate hits"
    per_batch = Counter(h.metadata.get("batch") for h in hits)
    assert all(n == BATCH for n in per_batch.values()), f"partial batches: {per_batch}"
    assert all(log.batch_of[h.key] == h.metadata["batch"] for h in hits)
    unreported = set(per_batch) - set(log.committed)  # (read after the search) at most one per writer
    assert len(unreported) <= 2, f"batches never reported committed were found: {sorted(unreported)}"
    # a filter on one batch: all of it or none of it
    b = int(rng.choice(list(log.plan)))
    hits = search_vectors(index, rng.standard_normal(50), k=BATCH + 100, where=f"batch = {b}")[0]
    assert len(hits) in (0, BATCH), f"batch {b}: {len(hits)} hits"
    assert {h.metadata["batch"] for h in hits} <= {b}
    # one snapshot: one generation for the count, the ids and a filter
    with index.snapshot():
        count, ids = index.count(), index.ids()
        matching = index.matching_ids("batch >= 0", index.generation())
    assert count == len(ids) == len(matching) and count % BATCH == 0, (count, len(ids), len(matching))
    assert len(np.unique(ids)) == len(ids)
    # a batch reported committed (and not being deleted) is found: its word is its own nearest
    live = log.live()
    if live:
        b = live[int(rng.integers(len(live)))]
        word = log.plan[b][int(rng.integers(BATCH))]
        vector = index.vector_of(word)
        top = search_vectors(index, vector, k=1, where=f"batch = {b}")[0] if vector is not None else []
        if b not in log.deleting:  # (a deletion may have begun meanwhile)
            assert vector is not None, f"{word!r} of batch {b}, reported committed, is not stored"
            assert top and top[0].key == word and top[0].score > 0.999, (word, top)


def reader(index: Index, log: Log, stop: threading.Event, seed: int, rounds: list[int]) -> None:
    rng = np.random.default_rng(seed)
    try:
        while not stop.is_set():
            observe(index, log, rng)
            rounds[seed] += 1
    except Exception:  # noqa: BLE001
        log.errors.append(f"reader {seed}:\n{traceback.format_exc()}")


def run(index: Index, log: Log, writers: list[list[int]], readers: int) -> list[int]:
    """The writers (each its list of batches) and the readers on one object; returns rounds per reader."""
    deadline = time.monotonic() + RUN_S
    stop = threading.Event()
    rounds = [0] * readers
    readers_ = [threading.Thread(target=reader, args=(index, log, stop, i, rounds), daemon=True)
                for i in range(readers)]
    writers_ = [threading.Thread(target=writer, args=(index, log, batches, deadline), daemon=True)
                for batches in writers]
    for thread in readers_ + writers_:
        thread.start()
    for thread in writers_:
        thread.join(RUN_S + 60)
    stop.set()
    for thread in readers_:
        thread.join(60)
    stuck = [t.name for t in readers_ + writers_ if t.is_alive()]
    assert not stuck, f"threads still running (a deadlock?): {stuck}"
    return rounds


def assert_reports_true(index: Index, log: Log) -> None:
    """Each batch reported committed is stored whole (unless deleted), none reported failed is;
    check() passes; a reopened index holds exactly the committed items, its vectors file in step."""
    directory = index.directory
    report = index.check()
    assert report["ok"], report["problems"]
    index.close()
    stored = Counter(b for (b,) in sql(directory, "SELECT json_extract(metadata, '$.batch') FROM items"))
    expected = {b: BATCH for b in log.committed if b not in log.deleting}
    assert dict(stored) == expected, "the store differs from the writers' reports"
    assert not {b for b, _ in log.failed} & set(stored), f"batches reported failed are stored: {log.failed}"
    with Index.open(directory) as reopened:
        assert reopened.recovered is None, reopened.recovered
        assert np.array_equal(reopened.vectors.ids(), reopened.ids())
        assert reopened.check()["ok"]
    assert not log.failed, f"writes failed: {log.failed[:3]}"


@pytest.fixture
def shared_index(tmp_path, glove_words):
    """Factory: a GloVe index of a type holding batches 0 and 1, and the log of its plan."""

    def make(index_type: str, batches: int) -> tuple[Index, Log]:
        words = glove_words[100:100 + BATCH * batches]
        log = Log({b: words[b * BATCH:(b + 1) * BATCH] for b in range(batches)})
        index = Index.create(tmp_path / index_type, encoder="glove", index_type=index_type)
        for b in (0, 1):
            index.add(records(log, b), batch_size=BATCH)
            log.committed.append(b)
        return index, log

    return make


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_one_writer_and_readers_share_one_object(shared_index, index_type):
    index, log = shared_index(index_type, 60)
    rounds = run(index, log, [list(range(2, 60))], readers=4)
    assert not log.errors, "\n".join(log.errors[:3])
    assert len(log.committed) >= 5 and min(rounds) >= 1, (log.committed, rounds)  # the run did overlap
    assert_reports_true(index, log)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_two_writers_and_readers_share_one_object(shared_index, index_type):
    index, log = shared_index(index_type, 60)
    rounds = run(index, log, [list(range(2, 60, 2)), list(range(3, 60, 2))], readers=3)
    assert not log.errors, "\n".join(log.errors[:3])
    assert len(log.committed) >= 6 and min(rounds) >= 1, (log.committed, rounds)
    assert_reports_true(index, log)


def test_a_thread_cannot_write_inside_its_own_snapshot(shared_index):
    """A write would wait for the thread's own snapshot to end: it is refused at once instead."""
    index, log = shared_index("flat", 3)
    with index.snapshot():
        with pytest.raises(LatentError, match="inside a snapshot"):
            index.add(records(log, 2), batch_size=BATCH)
        with pytest.raises(LatentError, match="inside a snapshot"):
            index.delete(log.plan[0])
        assert index.count() == 2 * BATCH
    index.add(records(log, 2), batch_size=BATCH)  # after it: fine
    assert index.count() == 3 * BATCH
    index.close()


def test_a_second_writer_thread_waits_for_the_first_then_times_out_clearly(shared_index, monkeypatch):
    monkeypatch.setenv("LATENT_LOCK_TIMEOUT", "0.3")
    index, log = shared_index("flat", 4)
    index.close()
    index = Index.open(index.directory)  # its write lock times out after 0.3 s
    committed, release = threading.Event(), threading.Event()

    def first():
        index.add(records(log, 2), batch_size=BATCH, on_commit=lambda g, n: (committed.set(), release.wait(30)))

    thread = threading.Thread(target=first, daemon=True)
    thread.start()
    assert committed.wait(30)
    with pytest.raises(LockTimeout, match="another thread of this process"):
        index.add(records(log, 3), batch_size=BATCH)
    release.set()
    thread.join(30)
    index.add(records(log, 3), batch_size=BATCH)
    assert index.count() == 4 * BATCH and index.check()["ok"]
    index.close()


def open_files(directory) -> int:
    """How many descriptors of this process are open on the index's database files."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory / "latent.db"))
        except OSError:
            continue
    return found


def test_each_thread_connection_is_closed_when_its_thread_ends(shared_index):
    """Threads come and go (a server's pool, a script's workers): the connection each opened closes
    when it ends. (SQLite keeps a closed connection's descriptor while another connection of the
    process holds a lock on the file, and reuses it: their number must not grow.)"""
    index, _ = shared_index("flat", 2)
    after = []
    together = threading.Barrier(10)  # each round's 10 connections are open at once

    def search_then_wait():
        search_vectors(index, np.ones(50), k=3)
        together.wait(30)

    for _ in range(4):
        threads = [threading.Thread(target=search_then_wait) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        gc.collect()
        after.append(open_files(index.directory))
    assert len(index.store._connections) == 1  # the main thread's
    assert max(after[1:]) <= after[0], after
    index.close()
    assert open_files(index.directory) == 0
