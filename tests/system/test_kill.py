"""SIGKILL the real `latent add` at random moments and at the named dangerous points (also
inside merges of the vector segments), and two concurrent `latent create` on one directory.

25 runs on one index (the harness is in kill_harness.py; benchmarks/bench_kill.py runs
200): after each kill, `latent check` passes before any repair, every batch the command
reported as committed is present, and after reopening FAISS ids == item ids. 12 create
races (every third left to finish, so it must have one winner): at most one index exists,
it opens and passes `check`, the winner's committed items are intact.
"""

from __future__ import annotations

from kill_harness import MERGE_POINTS, POINTS, KillHarness

RUNS = 25


def test_kill_latent_add_25_times(tmp_path, glove_words):
    harness = KillHarness(tmp_path / "killed", glove_words[100:], per_run=2000, batch=50, seed=1)
    harness.create()
    for mode, when in harness.plan(RUNS):
        harness.run(mode, when)
    summary = harness.summary()
    print({k: v for k, v in summary.items() if k != "runs_detail"})
    assert summary["runs"] == RUNS
    assert set(summary["by_mode"]) == {"random", *POINTS}
    for point in POINTS:  # every named point really killed the command
        assert summary["by_mode"][point]["killed"] == summary["by_mode"][point]["runs"] >= 3
    assert summary["by_mode"]["random"]["killed"] >= 5, summary["by_mode"]["random"]
    assert summary["batches_verified"] > 0
    assert harness.committed <= harness.store_keys()


MERGE_RUNS = 12


def test_kill_latent_add_mid_merge(tmp_path, glove_words):
    """Kills inside merges of the segments into the base (every run merges several times): at
    their start, once the new base is in place but unlisted, once listed but the old segment
    files are still there; and at random moments."""
    harness = KillHarness(tmp_path / "merging", glove_words[100:], per_run=1500, batch=50, seed=3,
                          points=MERGE_POINTS)
    harness.create()
    for mode, when in harness.plan(MERGE_RUNS):
        harness.run(mode, when)
    summary = harness.summary()
    print({k: v for k, v in summary.items() if k != "runs_detail"})
    for point in MERGE_POINTS:
        assert summary["by_mode"][point]["killed"] == summary["by_mode"][point]["runs"] >= 2
    assert summary["batches_verified"] > 0
    assert harness.committed <= harness.store_keys()


RACES = 12


def test_two_concurrent_creates_killed_at_random_moments(tmp_path, glove_words):
    harness = KillHarness(tmp_path / "races", glove_words[100:], seed=2)
    outcomes = [harness.race_creates(number) for number in range(RACES)]
    print(outcomes)
    assert sum(bool(o["killed"]) for o in outcomes) >= RACES // 3  # kills really happened
    plain = [o for o in outcomes if set(o["fates"].values()) == {"finish"}]
    assert len(plain) >= RACES // 3 and all(len(o["created"]) == 1 and o["items"] == 300 for o in plain), plain
    assert sum(len(o["created"]) == 1 for o in outcomes) >= len(plain)  # wins, one per plain race at least
