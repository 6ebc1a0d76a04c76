"""Kill `latent add` at random moments and at the named dangerous points, then verify.

Shared by tests/system/test_kill.py (25 runs in CI) and benchmarks/bench_kill.py (200 runs).
Every run starts the real `latent add -v` command on a fresh slice of GloVe words,
SIGKILLs it (after a random delay, or through a failpoint: after a SQLite commit, after
the temporary vectors file is written, after its fsync = before the rename, after the
rename; with merge_points, at the start of a merge of the segments into a new base, after the
new base is in place, after the manifest lists it), and then checks, before anything repairs the index:

- `latent check` passes (SQLite integrity_check ok, no damaged rows, the vectors file is
  intact and, once caught up in memory, holds exactly the store's ids);
- every batch the command reported as committed is in the store, and nothing that was
  never offered is;

and after reopening (which catches the vectors file up and saves it): FAISS ids == item
ids, no duplicates, and the newest committed word is found by search.

`race_creates` starts two `latent create` (then `latent add -v`) on one fresh directory at
once, kills either or both at a random moment or at a failpoint, and checks that at most one
index exists, that it opens and passes `check`, and that the winner's committed items are intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
POINTS = ("commit", "vectors-written", "vectors-synced", "vectors-renamed")
MERGE_POINTS = ("merge-start", "merge-renamed", "merge-recorded")  # a merge of segments into a new base
# Small merge thresholds, so that every run merges its segments into the base several times.
MERGE_ENV = {"LATENT_MERGE_MIN": "200", "LATENT_MERGE_RATIO": "0.02"}
COMMITTED = re.compile(r"committed generation (\d+): (\d+) items")


def latent_command() -> list[str]:
    """The installed `latent` console script next to this Python, else the module."""
    script = Path(sys.executable).with_name("latent")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from latent.cli import main; main()"]


@dataclass
class Run:
    number: int
    mode: str  # "random" or a failpoint name
    when: str  # the delay in seconds, or the failpoint's hit count
    killed: bool = False
    batches: int = 0  # batches the command reported as committed
    items: int = 0  # items in those batches
    count: int = 0  # items in the store afterwards
    check_notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class KillHarness:
    directory: Path
    words: list[str]
    per_run: int = 2000
    batch: int = 50
    seed: int = 0
    points: tuple = POINTS  # the failpoints the plan spreads its kills over
    offered: int = 0  # words[:offered] have been given to some run
    committed: set = field(default_factory=set)
    runs: list = field(default_factory=list)

    def __post_init__(self):
        self.directory = Path(self.directory)
        self.rng = random.Random(self.seed)
        self.inputs = self.directory.parent / f"{self.directory.name}-inputs"
        self.inputs.mkdir(parents=True, exist_ok=True)

    def create(self) -> None:
        out = subprocess.run([*latent_command(), "-q", "create", str(self.directory), "--encoder", "glove",
                              "--index", "flat"], capture_output=True, text=True, cwd=ROOT, env=self._env())
        assert out.returncode == 0, out.stderr

    def _env(self, failpoint: str | None = None) -> dict:
        # a failpoint run saves after every batch, so that its N-th save surely comes; a random-moment run
        # saves every 50 ms, so that kills also land between saves
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LATENT_SAVE_EVERY_S": "0" if failpoint else "0.05",
               "LATENT_LOCK_TIMEOUT": "10", **MERGE_ENV}
        env.pop("LATENT_FAILPOINTS", None)
        if failpoint:
            env["LATENT_FAILPOINTS"] = failpoint
        return env

    def plan(self, n_runs: int) -> list[tuple[str, str]]:
        """About half random-time kills, the rest spread over the named points."""
        plan = []
        for i in range(n_runs):
            if i % 2 == 0:
                plan.append(("random", ""))
            else:
                point = self.points[(i // 2) % len(self.points)]
                hit = self.rng.randint(1, self.per_run // self.batch) if point == "commit" else \
                    self.rng.randint(1, 2 if point in MERGE_POINTS else 3)
                plan.append((point, str(hit)))
        return plan

    def run(self, mode: str, when: str) -> Run:
        words = self.words[self.offered:self.offered + self.per_run]
        if len(words) < self.per_run:
            raise RuntimeError("out of words for another run")
        source = self.inputs / f"run-{len(self.runs)}.txt"
        source.write_text("\n".join(words) + "\n", encoding="utf-8")
        self.offered += len(words)
        failpoint = None if mode == "random" else f"{mode}:{when}=kill"
        # a random moment: after a random number of committed batches (0: during start-up), plus up
        # to 30 ms, so that kills land in encoding, commits, saves and the final save alike
        after, jitter = self.rng.randint(0, self.per_run // self.batch), self.rng.uniform(0.0, 0.03)
        run = Run(len(self.runs), mode, f"{after}+{jitter * 1000:.0f}ms" if mode == "random" else when)
        started = time.monotonic()
        child = subprocess.Popen(
            [*latent_command(), "add", str(self.directory), str(source), "--format", "words", "-v",
             "--batch-size", str(self.batch)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=self._env(failpoint))
        early: list[str] = []
        try:
            if mode == "random":
                while len(COMMITTED.findall("".join(early))) < after:
                    line = child.stderr.readline()
                    if not line:  # it finished (or died) first
                        break
                    early.append(line)
                time.sleep(jitter)
                child.send_signal(signal.SIGKILL)
            out, err = child.communicate(timeout=120)
            err = "".join(early) + err
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        run.seconds = time.monotonic() - started
        run.killed = child.returncode == -signal.SIGKILL
        if not run.killed:
            assert child.returncode == 0, f"run {run.number} ({mode} {when}) failed: {err[-2000:]}"
        reported = [(int(g), int(n)) for g, n in COMMITTED.findall(err)]
        generations = [g for g, _ in reported]
        assert generations == sorted(set(generations)), f"run {run.number}: generations {generations}"
        run.batches, run.items = len(reported), sum(n for _, n in reported)
        self.committed |= set(words[:run.items])  # batches commit in input order
        if mode != "random":
            assert run.killed, f"run {run.number}: failpoint {failpoint} was never reached: {err[-2000:]}"
        self.verify(run, words, reported)
        self.runs.append(run)
        return run

    def race_creates(self, number: int) -> dict:
        """Two `latent create DIR && latent add DIR -v` on one fresh directory, started together
        (flat and hnsw, to tell the winner by its manifest); each is SIGKILLed after a random
        delay, at a failpoint (of its create, or of its add), or left to finish. Returns what happened."""
        directory = self.directory.parent / f"race-{number}"
        types = ("flat", "hnsw")
        words = {}
        racers = []
        for index_type in types:
            words[index_type] = self.words[self.offered:self.offered + 300]
            self.offered += 300
            source = self.inputs / f"race-{number}-{index_type}.txt"
            source.write_text("\n".join(words[index_type]) + "\n", encoding="utf-8")
            # every third race is a plain race that both finish: it must produce one winner
            # (under load, the random fates alone may leave no race with a finished create)
            fate = "finish" if number % 3 == 0 else self.rng.choice(["random", "random", "finish", *POINTS])
            failpoint = f"{fate}:1=kill" if fate in POINTS else None
            command = " ".join(shlex.quote(a) for a in latent_command())
            script = (f"{command} create {shlex.quote(str(directory))} --encoder glove --index {index_type} && "
                      f"{command} add {shlex.quote(str(directory))} {shlex.quote(str(source))} --format words -v "
                      "--batch-size 50")
            child = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT, env=self._env(failpoint), start_new_session=True)
            racers.append((index_type, fate, self.rng.uniform(0.2, 4.0) if fate == "random" else None, child))
        started = time.monotonic()
        outcome = {"number": number, "fates": {t: f for t, f, _, _ in racers}, "created": [], "killed": []}
        for index_type, fate, delay, child in racers:
            if delay is not None:
                try:
                    child.wait(timeout=max(0.0, started + delay - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
        committed = {}
        for index_type, fate, _, child in racers:
            out, err = child.communicate(timeout=120)
            if child.returncode < 0 or child.returncode == 128 + signal.SIGKILL:  # by us, or by its failpoint
                outcome["killed"].append(index_type)
            if "Created" in out:
                outcome["created"].append(index_type)
                committed[index_type] = sum(int(n) for _, n in COMMITTED.findall(err))
            elif index_type not in outcome["killed"]:  # it lost the race
                assert "already holds an index" in err, f"race {number} ({index_type}): {err[-2000:]}"
        assert len(outcome["created"]) <= 1, f"race {number}: both creates succeeded: {outcome}"
        self.verify_race(directory, outcome, words, committed)
        return outcome

    def verify_race(self, directory: Path, outcome: dict, words: dict, committed: dict) -> None:
        from latent.indexer import Index
        from latent.indexer.store import Store

        if not Store.holds_store(directory):  # both died before a create committed: nothing to check
            assert not outcome["created"], outcome
            return
        with Index.open(directory) as index:  # opening repairs (a create killed before its first save)
            winner = index.index_type
            assert not outcome["created"] or outcome["created"] == [winner], (outcome, winner)
            _ = index.vectors
            report = index.check()
            assert report["ok"], (outcome, report)
            keys = set(index.store.lookup(words[winner]))
            assert len(keys) == index.count(), f"race {outcome['number']}: items of the loser: {outcome}"
            assert set(words[winner][:committed.get(winner, 0)]) <= keys, f"race {outcome['number']}: lost items"
            assert np.array_equal(np.sort(index.vectors.ids()), index.ids())
        outcome["winner"], outcome["items"] = winner, len(keys)

    def verify(self, run: Run, words: list[str], reported: list[tuple[int, int]]) -> None:
        from click.testing import CliRunner

        from latent.cli import cli
        from latent.indexer import Index
        from latent.search import search

        # before anything repairs it: `latent check` passes, it only notes a file behind the store
        result = CliRunner().invoke(cli, ["check", str(self.directory), "--json"])
        report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
        assert result.exit_code == 0 and report.get("ok"), \
            f"run {run.number} ({run.mode} {run.when}): latent check failed: {result.output} {result.stderr}"
        run.check_notes = report["notes"]
        keys = self.store_keys()
        lost = self.committed - keys
        assert not lost, f"run {run.number}: {len(lost)} committed items lost, e.g. {sorted(lost)[:5]}"
        assert keys <= set(self.words[:self.offered]), f"run {run.number}: items that were never offered"
        if reported:
            assert report["generation"] >= reported[-1][0]

        # reopening repairs (catches up, saves); then both stores hold the same ids
        with Index.open(self.directory) as index:
            vindex = index.vectors
            live = index.store.ids()
            faiss_ids = vindex.ids()
            assert len(faiss_ids) == len(np.unique(faiss_ids)), f"run {run.number}: duplicate ids in FAISS"
            assert np.array_equal(faiss_ids, live), f"run {run.number}: FAISS ids != store ids after reopening"
            assert index.check()["ok"]
            run.count = index.count()
            if run.items:
                newest = words[run.items - 1]
                assert search(index, newest, k=1)[0].key == newest
        self.committed = keys | self.committed

    def store_keys(self) -> set[str]:
        conn = sqlite3.connect(f"file:{self.directory / 'latent.db'}?mode=ro", uri=True)
        try:
            return {k for (k,) in conn.execute("SELECT key FROM items")}
        finally:
            conn.close()

    def summary(self) -> dict:
        by_mode: dict[str, dict] = {}
        for r in self.runs:
            m = by_mode.setdefault(r.mode, {"runs": 0, "killed": 0, "finished": 0, "batches_verified": 0})
            m["runs"] += 1
            m["killed" if r.killed else "finished"] += 1
            m["batches_verified"] += r.batches
        return {"runs": len(self.runs), "killed": sum(r.killed for r in self.runs),
                "batches_verified": sum(r.batches for r in self.runs), "items_final": self.runs[-1].count,
                "by_mode": by_mode, "seconds": round(sum(r.seconds for r in self.runs), 1),
                "runs_detail": [asdict(r) for r in self.runs]}
