"""Concurrency with real processes: one writer, several readers, a second writer.

1. A writer process adds GloVe words in many small batches (vectors.faiss replaced after
   every batch: SAVE_EVERY_S = 0), upserts and re-adds keys and deletes some, while four
   reader processes search: some keep one Index open and catch up in memory, some open a
   fresh Index each time, some run `check`. Every observation is checked against the
   writer's log of committed generations (flat and HNSW, where deletions are tombstones).
2. A second writer (`latent add`) started while the first holds the lock fails after
   LATENT_LOCK_TIMEOUT with one "locked" line and exit code 1, writing nothing; with a
   longer timeout it waits for the first and then succeeds.
3. A reader holding an open index keeps giving correct results while another process
   replaces vectors.faiss many times (batches, deletions, rebuilds).

Two races the readers of (1) and (3) found are also reproduced deterministically: check()
reporting damage when a writer commits during it, and search() returning fewer than k hits
when a writer deletes during it (both fixed: each now reads one snapshot of the store).

Every child has a watchdog; a fixture kills whatever is left, so the suite cannot hang.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import sql, store_generation, word_records

import latent.indexer.vector_index as vx
from latent.indexer import Index
from latent.search import search

ROOT = Path(__file__).resolve().parents[2]
LATENT = Path(sys.executable).parent / "latent"
QUERIES = ("king", "france", "computer", "river", "music")


# -- helpers ---------------------------------------------------------------------------------------
def file_identity(directory) -> tuple[int, int]:
    """Which vectors.faiss this is: inode numbers are reused by later files, so with its mtime."""
    st = os.stat(Path(directory) / vx.FILE_NAME)
    return st.st_ino, st.st_mtime_ns


def holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def assert_consistent(directory) -> dict:
    """check() ok, FAISS ids == store ids, every key stored once. Returns key -> text."""
    with Index.open(directory) as index:
        report = index.check()
        assert report["ok"], report["problems"]
        assert np.array_equal(index.vectors.ids(), index.store.ids())
        assert len(index.vectors.ids()) == index.store.count() == report["count"]
        assert index.recovered is None, index.recovered  # the last save was current: nothing to repair
    rows = sql(directory, "SELECT key, text FROM items")
    assert sql(directory, "SELECT key, count(*) FROM items GROUP BY key HAVING count(*) > 1") == []
    assert len({k for k, _ in rows}) == len(rows)
    return dict(rows)


@pytest.fixture
def spawn():
    """Start a child (python -c SCRIPT or a command); every child gets a watchdog and is killed at teardown."""
    children: list[tuple[subprocess.Popen, threading.Timer]] = []

    def start(args, *, limit=60, env=None, stdin=None):
        child = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=ROOT, env={**os.environ, **(env or {})})
        watchdog = threading.Timer(limit, child.kill)
        watchdog.daemon = True
        watchdog.start()
        children.append((child, watchdog))
        return child

    yield start
    for child, watchdog in children:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        for stream in (child.stdin, child.stdout, child.stderr):
            try:
                if stream:
                    stream.close()
            except (OSError, ValueError):
                pass


def python(script, *args):
    return [sys.executable, "-c", script, *map(str, args)]


def lines_of(stream, out: queue.Queue):
    """Feed a child's stdout lines into a queue from a thread (None at EOF)."""

    def pump():
        for line in stream:
            out.put(line)
        out.put(None)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def next_line(lines: queue.Queue, timeout: float, what: str) -> str:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {what} within {timeout}s") from None
    assert line is not None, f"the child ended before {what}"
    return line


# -- the writer ------------------------------------------------------------------------------------
# Both writing children: vectors.faiss is replaced after every committed batch (each batch's segment
# merges into a new base at once: merge threshold 0), and `saves` counts the files written.
SAVING_EVERY_BATCH = textwrap.dedent("""
    import latent.indexer.index as ix
    import latent.indexer.segments as sg
    import latent.indexer.vector_index as vx

    ix.SAVE_EVERY_S = 0
    sg.MERGE_MIN, sg.MERGE_RATIO = 0, 0.0
    saves = 0
    real_save = vx.VectorIndex.save

    def counting_save(self, *args, **kwargs):
        global saves
        saves += 1
        return real_save(self, *args, **kwargs)

    vx.VectorIndex.save = counting_save
""")


# argv: directory, plan (JSON file), duration (s), pause per batch (s), at least N generations, at most (s),
# optionally a file to wait for before starting ("" for none) and a file that, while it exists, holds the
# writer (and so the lock) after each batch.
# Runs the plan's steps until it is done, or the duration has passed and N generations are committed, or
# the longest time has passed; prints one JSON line per committed generation.
WRITER = SAVING_EVERY_BATCH + textwrap.dedent("""
    import json, os, sys, time
    from latent.indexer import Index, Record
    from latent.indexer.lock import WriteLock

    directory, plan_file, duration, pause = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    at_least, at_most = int(sys.argv[5]), float(sys.argv[6])  # generations to commit, seconds (a loaded machine)
    go_file = sys.argv[7] if len(sys.argv) > 7 and sys.argv[7] else None
    hold_file = sys.argv[8] if len(sys.argv) > 8 else None
    plan = json.load(open(plan_file))
    lock_waits = []  # seconds each acquisition of the writer lock waited (readers repairing hold it briefly)
    real_acquire = WriteLock.acquire

    def timed_acquire(self):
        t = time.monotonic()
        try:
            return real_acquire(self)
        finally:
            lock_waits.append(time.monotonic() - t)

    WriteLock.acquire = timed_acquire

    def emit(**fields):
        print(json.dumps({**fields, "t": round(time.monotonic(), 4)}), flush=True)

    index = Index.open(directory)
    _ = index.encoder, index.vectors  # warm: GloVe and the vector index loaded before the clock starts
    while go_file and not os.path.exists(go_file):  # the readers are ready
        time.sleep(0.01)
    emit(event="start", pid=os.getpid(), gen=index.store.generation())
    started = time.monotonic()
    first = index.store.generation()
    for step in plan:
        elapsed = time.monotonic() - started
        if (elapsed > duration and index.store.generation() - first >= at_least) or elapsed > at_most:
            break
        if "add" in step:
            recs, done, gens = step["add"], [0], []

            def progress(stage, n, total):
                if stage == "add" and n:  # after each committed batch (the lock is held)
                    lo = done[0]
                    done[0] += n
                    gens.append(index.store.generation())
                    emit(event="add", gen=gens[-1], keys=recs[lo:lo + n], saves=saves)
                    time.sleep(pause)
                    while hold_file and os.path.exists(hold_file) and time.monotonic() - started < at_most:
                        time.sleep(0.01)  # hold the lock, mid-add, until the test lets go

            report = index.add([Record(text=t, key=k, kind="word") for k, t in recs], batch_size=step["batch"],
                               progress=progress)
            assert [g for g, _ in report.committed] == gens, (report.committed, gens)
            assert report.added + report.replaced == len(recs) and not report.skipped, report.as_dict()
        else:
            count, missing = index.delete(step["delete"])
            emit(event="delete", gen=index.store.generation(), keys=step["delete"], count=count,
                 missing=missing, saves=saves)
    emit(event="finished", gen=index.store.generation(), saves=saves, seconds=time.monotonic() - started,
         lock_waits=lock_waits)
    index.close()
""")

# argv: directory, log file, stop file, seed, queries (JSON file), deadline (s).
# Prints "ready" once warm; loops until the stop file exists, then one last observation each way.
READER = textwrap.dedent("""
    import json, os, random, sys, time, traceback
    from pathlib import Path
    from latent.indexer import Index
    from latent.search import search

    directory, log_file, stop_file = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    rng = random.Random(int(sys.argv[4]))
    queries = json.load(open(sys.argv[5]))
    deadline = time.monotonic() + float(sys.argv[6])
    vec_file = os.path.join(directory, "vectors.faiss")
    log = {"obs": [], "errors": [], "checks": [], "opens": 0, "sessions": 0, "catch_ups": 0, "files": []}
    files = set()

    def observe(index, mode):
        vindex = index.vectors  # loads, or catches up in memory
        g, n = vindex.generation, len(vindex.ids())
        q = rng.choice(queries)
        hits = search(index, q, k=10)
        g2 = index.vectors.generation
        st = os.stat(vec_file)  # inode numbers are reused by later files: with the mtime, one file
        files.add((st.st_ino, st.st_mtime_ns))
        log["obs"].append([mode, g, n, g2, q, [[h.key, round(h.score, 5)] for h in hits]])
        return g2

    def opened():
        log["opens"] += 1
        return Index.open(directory)

    with opened() as index:  # warm: imports, GloVe, first load
        observe(index, "warm")
    print("ready", flush=True)

    while not stop_file.exists() and time.monotonic() < deadline:
        choice = rng.random()
        try:
            if choice < 0.3:  # keep one Index open: it catches up in memory between searches
                log["sessions"] += 1
                with opened() as index:
                    last = None
                    for _ in range(rng.randint(3, 10)):
                        g = observe(index, "open")
                        if last is not None and g != last:
                            log["catch_ups"] += 1
                        last = g
                        time.sleep(rng.uniform(0, 0.02))
                        if stop_file.exists():
                            break
            elif choice < 0.9:  # a fresh Index each time: loads whatever vectors.faiss is there now
                with opened() as index:
                    observe(index, "fresh")
            else:
                with opened() as index:
                    report = index.check()
                log["checks"].append([report["ok"], report["problems"], report.get("notes", [])])
        except Exception:
            log["errors"].append(traceback.format_exc())
        time.sleep(rng.uniform(0, 0.005))

    try:  # after the writer finished: both ways must see its last generation
        with opened() as index:
            observe(index, "final")
            observe(index, "final")
    except Exception:
        log["errors"].append(traceback.format_exc())
    log["files"] = sorted(files)  # [inode, mtime_ns] pairs
    Path(log_file).write_text(json.dumps(log))
    print("done", flush=True)
""")


# -- the writer's plan and its log ----------------------------------------------------------------------
def make_plan(words, initial, *, rounds=100, batch=8, seed=7):
    """Steps: an add of ~5 batches (new words, re-added deleted keys, upserts of live keys with
    another word's text), then a delete of a few live keys and one unknown key."""
    rng = random.Random(seed)
    fresh = iter(words[3000:20000])
    texts = iter(words[30000:60000])  # upsert texts: never used as keys
    live = {w: w for w in initial}
    deletable = list(initial[len(initial) // 2:])  # the first half of the initial words is never touched
    added: list[str] = []
    deleted: list[str] = []
    plan = []
    for r in range(rounds):
        recs = [[w, w] for w in (next(fresh) for _ in range(5 * batch - 3))]
        for key in rng.sample(deleted, min(2, len(deleted))):  # re-added: a new id for an old key
            deleted.remove(key)
            recs.insert(rng.randrange(len(recs) + 1), [key, key])
            added.append(key)
        in_step = {k for k, _ in recs}
        candidates = [k for k in added if k in live and k not in in_step]
        if r % 2 and candidates:  # upsert: the key stays, its vector changes
            key = rng.choice(candidates)
            recs.insert(rng.randrange(len(recs) + 1), [key, next(texts)])
        for k, t in recs:
            live[k] = t
        added += [k for k, _ in recs if k not in added]
        plan.append({"add": recs, "batch": batch})
        victims = rng.sample([k for k in added if k in live], 3) + [rng.choice([k for k in deletable if k in live])]
        for k in victims:
            del live[k]
        deleted += victims
        plan.append({"delete": victims + [f"no-such-key-{r}"]})
    return plan


class Timeline:
    """What was live at each generation, from the writer's log."""

    def __init__(self, initial: list[str], start_gen: int, events: list[dict]):
        self.intervals: dict[str, list[list]] = defaultdict(list)  # key -> [[start, end or None, text]]
        live = {}
        for w in initial:
            self.intervals[w].append([start_gen, None, w])
            live[w] = w
        self.count = {start_gen: len(live)}
        self.first, self.last = start_gen, start_gen
        for ev in events:
            g = ev["gen"]
            assert g == self.last + 1, f"generation {self.last + 1} missing from the writer's log (got {g})"
            if ev["event"] == "add":
                for key, text in ev["keys"]:
                    if key in live:  # an upsert: the old id is deleted
                        self.intervals[key][-1][1] = g
                    self.intervals[key].append([g, None, text])
                    live[key] = text
            else:
                gone = [k for k in ev["keys"] if k in live]
                assert ev["count"] == len(gone) and sorted(ev["missing"]) == sorted(set(ev["keys"]) - set(gone))
                for key in gone:
                    self.intervals[key][-1][1] = g
                    del live[key]
            self.count[g] = len(live)
            self.last = g
        self.live = live

    def ever_live(self, key: str, g1: int, g2: int) -> bool:
        return any(s <= g2 and (e is None or e > g1) for s, e, _ in self.intervals.get(key, ()))

    def itself_throughout(self, word: str, g1: int, g2: int) -> bool:
        """`word` was stored under its own key with its own vector in every generation g1..g2."""
        return any(t == word and s <= g1 and (e is None or e > g2) for s, e, t in self.intervals.get(word, ()))


def check_reader(log: dict, timeline: Timeline, name: str) -> dict:
    """Every invariant of one reader's observations; returns figures."""
    assert log["errors"] == [], f"{name} raised:\n" + "\n".join(log["errors"])
    last = -1
    short = 0
    for mode, g, n, g2, q, hits in log["obs"]:
        where = f"{name} {mode} search {q!r} at generations {g}..{g2}"
        assert last <= g <= g2 <= timeline.last, f"{where}: generation went backwards (after {last})"
        last = g2
        if g >= timeline.first:
            assert n == timeline.count[g], f"{where}: {n} vectors, the store had {timeline.count[g]} live items"
        keys = [k for k, _ in hits]
        assert len(keys) == len(set(keys)), f"{where}: duplicate hits {keys}"
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True), f"{where}: hits not in order {hits}"
        short += len(hits) < 10
        assert len(hits) == 10, f"{where}: {len(hits)} hits although 1000+ items are live"
        never = [k for k in keys if not timeline.ever_live(k, max(g, timeline.first), g2)]
        assert never == [], f"{where}: returned keys not live then: {never}"
        if g >= timeline.first and timeline.itself_throughout(q, g, g2):
            assert keys[0] == q and scores[0] == pytest.approx(1.0, abs=1e-4), f"{where}: itself not found: {hits}"
    finals = [o for o in log["obs"] if o[0] == "final"]
    assert len(finals) == 2 and all(o[1] == o[3] == timeline.last and o[2] == timeline.count[timeline.last]
                                    for o in finals), f"{name} did not catch up with the last generation: {finals}"
    # check() under a live writer: no problem at all (a file behind the store is only a note)
    problems = [p for _, ps, _ in log["checks"] for p in ps]
    assert problems == [], f"{name}: check() found damage under a live writer: {problems}"
    modes = [o[0] for o in log["obs"]]
    return {"searches": len(modes), "open": modes.count("open"), "fresh": modes.count("fresh"),
            "checks": len(log["checks"]), "false_alarms": len(problems),
            "behind_notes": sum(1 for _, _, notes in log["checks"] if notes),
            "catch_ups": log["catch_ups"], "short": short,
            "generations": len({o[1] for o in log["obs"]} | {o[3] for o in log["obs"]}),
            "files": {tuple(i) for i in log["files"]}, "opens": log["opens"]}


# -- 1. one writer, four readers -----------------------------------------------------------------------
@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_readers_never_see_a_torn_or_backward_index_while_a_writer_replaces_it(tmp_path, glove_words, index_type,
                                                                               spawn):
    directory = tmp_path / f"words-{index_type}"
    initial = glove_words[100:1100]
    with Index.create(directory, encoder="glove", index_type=index_type) as index:
        index.add(word_records(initial))
        start_gen = index.store.generation()
    plan = make_plan(glove_words, initial)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    # what readers search for: untouched, deleted, re-added, upserted and new words, and upsert texts
    touched = [k for step in plan[:80] for k in (step.get("delete") or [k for k, _ in step["add"]])]
    texts = [t for step in plan[:80] if "add" in step for k, t in step["add"] if k != t]
    queries = list(dict.fromkeys(initial[:300:3] + [k for k in touched if not k.startswith("no-such")] + texts))
    (tmp_path / "queries.json").write_text(json.dumps(queries))
    stop = tmp_path / "stop"

    started = time.monotonic()
    readers = [spawn(python(READER, directory, tmp_path / f"reader{i}.json", stop, i, tmp_path / "queries.json", 60))
               for i in range(4)]
    go = tmp_path / "go"
    writer = spawn(python(WRITER, directory, tmp_path / "plan.json", 3.0, 0.0, 45, 10.0, go))  # warms up meanwhile
    for r in readers:  # readline cannot block forever: the watchdog kills a stuck child, closing its pipe
        assert r.stdout.readline().strip() == "ready", r.stderr.read()
    ready = time.monotonic()
    go.touch()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    written = time.monotonic()
    stop.touch()
    logs = []
    for i, r in enumerate(readers):
        rout, rerr = r.communicate(timeout=60)
        assert r.returncode == 0 and rout.strip() == "done", rerr
        logs.append(json.loads((tmp_path / f"reader{i}.json").read_text()))
    elapsed = time.monotonic() - started

    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["event"] == "start" and events[0]["gen"] == start_gen
    assert events[-1]["event"] == "finished"
    committed = events[1:-1]
    timeline = Timeline(initial, start_gen, committed)
    assert events[-1]["gen"] == timeline.last

    batches = [e for e in committed if e["event"] == "add"]
    deletes = [e for e in committed if e["event"] == "delete"]
    assert len(batches) >= 20 and len(deletes) >= 3, "the writer did too little to test anything"
    # SAVE_EVERY_S = 0: one save per committed batch or delete (the last batch of an add is saved by the end
    # of the add, not twice)
    assert events[-1]["saves"] >= len(committed)

    figures = [check_reader(log, timeline, f"reader {i}") for i, log in enumerate(logs)]
    for i, f in enumerate(figures):
        assert f["open"] >= 5 and f["fresh"] >= 3, f"reader {i} did not exercise both ways: {f}"
        assert f["generations"] >= 5, f"reader {i} saw too few generations: {f}"
    assert sum(f["catch_ups"] for f in figures) >= 10, "kept-open readers never caught up in memory"
    replaced = set().union(*(f["files"] for f in figures))
    assert len(replaced) >= 10, f"readers saw vectors.faiss replaced only {len(replaced) - 1} times"

    # the end: consistent, each key once, exactly the live keys (with their texts) the writer's log says
    stored = assert_consistent(directory)
    assert stored == timeline.live
    with Index.open(directory) as index:
        assert index.vectors.generation == timeline.last
        if index_type == "hnsw":
            assert index.vectors.factory == "HNSW32"
            assert len(index.vectors.tombstones) > 0  # deletions stayed tombstones, hidden from every search
        for word in list(timeline.live)[::97]:
            if timeline.live[word] == word:
                assert search(index, word, k=1)[0].key == word

    gap = max(b["t"] - a["t"] for a, b in itertools.pairwise(committed))
    waits = events[-1]["lock_waits"]

    def total(name):
        return sum(f[name] for f in figures)

    tail = elapsed - (written - started)
    print(f"\n[{index_type}] {elapsed:.1f}s: readers ready after {ready - started:.1f}s, writer done "
          f"{written - ready:.1f}s later ({events[-1]['seconds']:.1f}s writing), readers done {tail:.1f}s later. "
          f"Writer: {len(batches)} batches + {len(deletes)} deletes (generations {start_gen + 1}..{timeline.last}), "
          f"{events[-1]['saves']} saves, longest pause between commits {gap:.2f}s, {len(waits)} lock acquisitions "
          f"waiting {sum(waits):.2f}s in all. Readers: {total('searches')} searches ({total('open')} kept-open, "
          f"{total('fresh')} fresh), {total('opens')} opens, {total('catch_ups')} in-memory catch-ups, "
          f"{len(replaced)} distinct vectors.faiss files seen, {total('short')} short results, {total('checks')} "
          f"checks ({total('behind_notes')} found the file behind, {total('false_alarms')} false alarms)")


# -- check() while a writer commits ---------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["before-the-file-is-read", "before-the-catch-up"])
def test_check_is_not_fooled_by_a_writer_committing_during_it(make_word_index, glove_words, monkeypatch, when):
    """The two windows the readers of the first test hit at random, made deterministic (in one process)."""
    index = make_word_index(n=500)
    directory = index.directory
    index.close()
    writer = Index.open(directory)
    _ = writer.vectors  # loaded: the writer's own writes do not read the file again
    if when == "before-the-catch-up":  # a crash after a commit leaves the file behind the store
        real_save = vx.VectorIndex.save
        monkeypatch.setattr(vx.VectorIndex, "save", lambda *a, **kw: (_ for _ in ()).throw(OSError("simulated crash")))
        with pytest.raises(Exception, match="simulated crash"):
            writer.add(word_records(glove_words[3000:3010]))
        monkeypatch.setattr(vx.VectorIndex, "save", real_save)
    checker = Index.open(directory)
    batches = iter([glove_words[4000:4010]])

    def commit_once():
        words = next(batches, None)
        if words is not None:
            writer.add(word_records(words))  # committed and saved by another connection

    if when == "before-the-file-is-read":
        real_read = vx.read_file  # the base, then each listed segment
        monkeypatch.setattr(vx, "read_file", lambda *a, **kw: (commit_once(), real_read(*a, **kw))[1])
    else:
        real_catch_up = checker._catch_up
        checker._catch_up = lambda vindex: (commit_once(), real_catch_up(vindex))[1]
    report = checker.check()
    assert next(batches, None) is None, "the writer did not commit during check()"
    checker.close()
    writer.close()
    assert report["ok"], report["problems"]


def test_search_returns_k_hits_when_a_writer_deletes_during_it(make_word_index, monkeypatch):
    """Deterministic form of the short results the open reader of test 3 sees while a writer deletes."""
    index = make_word_index(n=500)
    directory = index.directory
    index.close()
    reader, writer = Index.open(directory), Index.open(directory)
    before = [h.key for h in search(reader, "king", k=10)]
    deleted = []
    real_rows = reader.store.cached_rows

    def rows_after_a_delete(ids, generation):
        if not deleted:
            deleted.append(writer.delete(before[1:8]))  # another connection commits a deletion
        return real_rows(ids, generation)

    monkeypatch.setattr(reader.store, "cached_rows", rows_after_a_delete)
    hits = search(reader, "king", k=10)
    reader.close()
    writer.close()
    assert deleted == [(7, [])]
    assert len(hits) == 10, [h.key for h in hits]  # 493 items are live, before and after the deletion


# -- 2. a second writer waits a bounded time ----------------------------------------------------------------
def test_second_writer_times_out_then_waits_and_succeeds(tmp_path, glove_words, spawn):
    directory = tmp_path / "locked"
    with Index.create(directory, encoder="glove", index_type="flat") as index:
        index.add(word_records(glove_words[100:600]))
    first_words = glove_words[3000:3400]
    (tmp_path / "plan.json").write_text(json.dumps([{"add": [[w, w] for w in first_words], "batch": 10}]))
    refused_words, waiting_words = glove_words[5000:5020], glove_words[5100:5120]
    (tmp_path / "refused.txt").write_text("\n".join(refused_words) + "\n")
    (tmp_path / "waiting.txt").write_text("\n".join(waiting_words) + "\n")

    # the first writer: one add of 40 batches, holding the lock throughout; held after its first batch
    # until the test lets go (the hold file), so the timing of the second writer does not matter
    hold = tmp_path / "hold"
    hold.touch()
    writer = spawn(python(WRITER, directory, tmp_path / "plan.json", 60, 0.01, 0, 45, "", hold), limit=60)
    out: queue.Queue = queue.Queue()
    lines_of(writer.stdout, out)
    events = [json.loads(next_line(out, 30, "the writer's start")), json.loads(next_line(out, 30, "the first batch"))]
    assert [e["event"] for e in events] == ["start", "add"]

    started = time.monotonic()
    refused = subprocess.run([LATENT, "add", directory, tmp_path / "refused.txt", "--format", "words"],
                             check=False, capture_output=True, text=True, cwd=ROOT, timeout=60,
                             env={**os.environ, "LATENT_LOCK_TIMEOUT": "1"})
    took = time.monotonic() - started
    assert writer.poll() is None, "the first writer finished before the second gave up: the test proved nothing"
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "locked" in lines[0], refused.stderr
    assert f"pid {writer.pid}" in lines[0] and "LATENT_LOCK_TIMEOUT" in lines[0]
    assert refused.stdout == "" and "Traceback" not in refused.stderr
    assert 1.0 <= took < 10, f"gave up after {took:.1f}s with LATENT_LOCK_TIMEOUT=1"

    # a second writer with a long timeout waits for the first, then succeeds
    waiting = spawn([LATENT, "add", directory, tmp_path / "waiting.txt", "--format", "words", "--json"],
                    env={"LATENT_LOCK_TIMEOUT": "60"}, limit=60)
    lock_file = directory / "write.lock"
    deadline = time.monotonic() + 30
    while not holds_open(waiting.pid, lock_file):  # opened in WriteLock.acquire: it is polling for the lock
        assert waiting.poll() is None, f"the second writer did not wait: {waiting.communicate()}"
        assert time.monotonic() < deadline, "the second writer never reached the lock"
        time.sleep(0.02)
    time.sleep(0.3)
    assert waiting.poll() is None, f"the second writer did not wait: {waiting.communicate()}"
    assert writer.poll() is None and out.empty()  # the first is still held after its first batch
    hold.unlink()  # let the first writer finish its remaining 39 batches
    wout, werr = waiting.communicate(timeout=60)
    writer.wait(timeout=60)
    assert writer.returncode == 0, writer.stderr.read()
    while (line := out.get(timeout=30)) is not None:
        events.append(json.loads(line))
    assert waiting.returncode == 0, werr
    assert json.loads(wout)["added"] == 20
    assert events[-1]["event"] == "finished"
    batch_gens = [e["gen"] for e in events if e["event"] == "add"]
    assert len(batch_gens) == 40 and batch_gens == list(range(batch_gens[0], batch_gens[0] + 40))

    # nothing of the refused writer; the waiting one committed after the first writer's last batch
    placeholders = ",".join("?" * 20)
    assert sql(directory, f"SELECT key FROM items WHERE key IN ({placeholders})", refused_words) == []
    assert sql(directory, f"SELECT key FROM deleted WHERE key IN ({placeholders})", refused_words) == []
    gens = {g for (g,) in sql(directory, f"SELECT generation FROM items WHERE key IN ({placeholders})",
                              waiting_words)}
    assert gens == {batch_gens[-1] + 1} and store_generation(directory) == batch_gens[-1] + 1
    stored = assert_consistent(directory)
    assert set(stored) == set(glove_words[100:600]) | set(first_words) | set(waiting_words)


# -- 3. vectors.faiss replaced under an open reader ---------------------------------------------------------
# argv: directory. Reads JSON commands on stdin: add (batches, pause), delete, rebuild; answers one JSON line each.
STEPPER = SAVING_EVERY_BATCH + textwrap.dedent("""
    import json, sys, time
    from latent.indexer import Index, Record

    index = Index.open(sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "add":
            index.add([Record(text=t, key=k, kind="word") for k, t in cmd["records"]], batch_size=cmd["batch"],
                      progress=lambda stage, n, total: time.sleep(cmd["pause"]) if stage == "add" and n else None)
        elif cmd["op"] == "delete":
            index.delete(cmd["keys"])
        else:
            index.rebuild()
        print(json.dumps({"gen": index.store.generation(), "saves": saves}), flush=True)
""")


def exact_top(index, word, k=10):
    """The true k nearest keys of a word: brute force over the stored vectors of the live items."""
    ids = index.store.ids()
    vectors = index.store.vectors(ids, index.dim)
    query = index.encoder.encode([word])[0]
    sims = vectors @ (query / np.linalg.norm(query))
    order = np.argsort(-sims, kind="stable")[:k]
    rows = index.store.fetch(ids[order].tolist())
    return [rows[int(i)]["key"] for i in ids[order]]


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_open_reader_keeps_correct_results_while_the_file_is_replaced(tmp_path, glove_words, index_type, spawn):
    directory = tmp_path / f"replaced-{index_type}"
    initial = glove_words[100:1600]
    with Index.create(directory, encoder="glove", index_type=index_type) as index:
        index.add(word_records(initial))
    reader = Index.open(directory)
    detached = vx.VectorIndex.load(directory)  # loaded vectors, not attached to any Index
    detached_before = detached.search(reader.encoder.encode(["king"]), 10)[1].tolist()
    king = [h.key for h in search(reader, "king", k=30)]
    assert reader.vectors.generation == 1

    new = glove_words[3000:3200]
    near_king = king[1:11]
    steps = [
        {"op": "add", "records": [[w, w] for w in new], "batch": 10, "pause": 0.01},  # 20 batches, 20 saves
        {"op": "delete", "keys": near_king + new[:20]},
        {"op": "rebuild"},
        {"op": "add", "records": [[w, w] for w in near_king[:3]] + [[new[50], "zanzibar"]], "batch": 2, "pause": 0.01},
        {"op": "delete", "keys": initial[200:1350]},  # HNSW: over 1000 tombstones, the write rebuilds and purges
        {"op": "rebuild"},
    ]
    writer = spawn(python(STEPPER, directory), stdin=subprocess.PIPE, limit=120)
    out: queue.Queue = queue.Queue()
    lines_of(writer.stdout, out)
    assert next_line(out, 30, "the stepper ready") == "ready\n"

    gone: set[str] = set()
    upserted = False
    files = {file_identity(directory)}
    searches = short = 0
    saves = 0
    try:
        for step in steps:
            before_gen = store_generation(directory)
            forbidden = gone - {k for k, _ in step.get("records", [])}  # deleted before this step, staying so
            writer.stdin.write(json.dumps(step) + "\n")
            writer.stdin.flush()
            while True:  # search all the while the writer works: never an exception, never a deleted key
                hits = search(reader, QUERIES[searches % len(QUERIES)], k=10)
                searches += 1
                keys = [h.key for h in hits]
                assert len(keys) == len(set(keys)) and not forbidden & set(keys), (step["op"], keys)
                short += len(keys) < 10
                assert len(keys) == 10, (step["op"], keys)
                files.add(file_identity(directory))
                try:
                    reply = out.get(timeout=0.005)
                    break
                except queue.Empty:
                    continue
            assert reply is not None, writer.stderr.read()
            reply = json.loads(reply)
            assert reply["saves"] > saves, f"{step['op']} did not replace vectors.faiss"
            saves = reply["saves"]
            files.add(file_identity(directory))
            if step["op"] == "delete":
                gone |= set(step["keys"])
            elif step["op"] == "add":
                gone -= {k for k, _ in step["records"]}
            expected_gen = before_gen if step["op"] == "rebuild" else before_gen + (
                -(-len(step.get("records", [])) // step.get("batch", 1)) if step["op"] == "add" else 1)
            assert reply["gen"] == expected_gen

            # the open reader (caught up in memory) answers as a fresh open of the new file, and exactly
            assert reader.vectors.generation == reply["gen"]
            assert np.array_equal(reader.vectors.ids(), reader.store.ids())
            with Index.open(directory) as fresh:
                assert fresh.vectors.generation == reply["gen"] and fresh.recovered is None
                for query in QUERIES + (new[60], near_king[0]):
                    got = [(h.key, round(h.score, 4)) for h in search(reader, query, k=10)]
                    ref = [(h.key, round(h.score, 4)) for h in search(fresh, query, k=10)]
                    truth = exact_top(fresh, query)
                    assert [k for k, _ in got] == truth, f"after {step['op']}: {query!r}: {got} != {truth}"
                    assert got == ref
                    assert not gone & {k for k, _ in got}
            assert search(reader, new[60], k=1)[0].key == new[60]
            upserted = upserted or any(t == "zanzibar" for _, t in step.get("records", []))
            top = search(reader, "zanzibar", k=1)[0]
            assert (top.key == new[50]) == upserted and (top.text == "zanzibar") == upserted
    finally:
        writer.stdin.close()
    writer.wait(timeout=30)
    assert writer.returncode == 0, writer.stderr.read()

    # the vectors loaded before all this still answer from memory, as they did
    assert detached.search(reader.encoder.encode(["king"]), 10)[1].tolist() == detached_before
    reader.close()
    assert len(files) >= 20 and saves >= 20
    assert_consistent(directory)
    with Index.open(directory) as index:
        assert len(index.vectors.tombstones) == 0  # rebuilt: purged
    print(f"\n[{index_type}] open reader: {searches} searches during {len(steps)} writer steps, {saves} saves, "
          f"{len(files)} distinct vectors.faiss files seen, {short} short results")


def test_wal_is_cut_back_after_an_add_once_readers_have_finished(tmp_path):
    """A reader holding a snapshot during a large ingest pins the -wal file, which grows with
    every commit (issue "Reliability, round 2", finding 11: 283 MB beside a 206 MB database).
    Once the reader has finished, the next add ends with a checkpoint that truncates it."""
    import sqlite3

    directory = tmp_path / "wal"
    index = Index.create(directory, encoder="vectors:384", index_type="flat")
    wal = directory / "latent.db-wal"
    rng = np.random.default_rng(0)
    reader = sqlite3.connect(str(directory / "latent.db"), isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM items").fetchone()  # a snapshot, held during the ingest
    for batch in range(10):
        keys = [f"b{batch}-{i}" for i in range(1000)]
        index.add_vectors(keys, rng.standard_normal((1000, 384)).astype(np.float32))
    pinned = wal.stat().st_size
    assert pinned > 8 << 20, pinned  # the reader kept the -wal from being reset
    assert reader.execute("SELECT count(*) FROM items").fetchone()[0] == 0  # still on its snapshot
    reader.execute("COMMIT")
    reader.close()
    index.add_vectors(["last"], rng.standard_normal((1, 384)).astype(np.float32))
    after = wal.stat().st_size if wal.exists() else 0
    print(f"-wal: {pinned / 2**20:.1f} MiB while a reader held a snapshot, {after / 2**20:.2f} MiB after the next add")
    assert after < 1 << 20, after
    assert index.count() == 10_001 and index.check()["ok"]
    index.close()
