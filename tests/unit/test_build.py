"""Builds without wasted work (indexer/tuning.py, indexer/vector_index.py): an index with a
recall target is built approximate once, with its tuning sample held out, and followed by
checks of its probes as it grows, without a rebuild; IVF's default nprobe scales with its
list count."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from latent.indexer import Index, tuning
from latent.indexer import vector_index as vx


def clustered(n: int, dim: int = 32, *, seed: int = 0, clusters: int = 50, noise: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def added(monkeypatch) -> Counter:
    """Vectors added through VectorIndex.add, by kind of index (Flat or approximate)."""
    counts: Counter = Counter()
    original = vx.VectorIndex.add

    def add(vindex, ids, vectors):
        counts["Flat" if vindex.factory == "Flat" else vindex.factory] += len(ids)
        return original(vindex, ids, vectors)

    monkeypatch.setattr(vx.VectorIndex, "add", add)
    return counts


def keys(start: int, stop: int) -> list[str]:
    return [f"v{i}" for i in range(start, stop)]


def test_a_target_builds_the_approximate_index_once_then_checks_growth_without_rebuilding(tmp_path, added):
    x = clustered(3000)
    index = Index.create(tmp_path / "i", encoder="vectors:32", index_type="hnsw", target_recall=0.9)
    index.add_vectors(keys(0, 500), x[:500])  # too few to hold a sample out: exact until tuned
    assert index.vectors.factory == "Flat" and "HNSW32" not in added and index.manifest.get("tuning") is None
    index.add_vectors(keys(500, 2000), x[500:2000])
    record = index.manifest["tuning"]
    assert record["count"] == 2000 and record["factory"] == "HNSW32" and record["reached"]
    assert added["HNSW32"] == 2000  # each vector added once: the held-out sample last, nothing rebuilt
    assert added["Flat"] == 2000 + 500  # copies: the writes' adds, and the first write's end rebuilt its 500 exact
    probe = record["probe"]
    assert probe["count"] == 2000 and len(probe["pairs"]) == tuning.PROBES and 0 < probe["recall"] <= 1

    # later writes go to an exact delta segment (indexer/segments.py), not into the graph, until a merge
    index.add_vectors(keys(2000, 2150), x[2000:2150])  # +7.5%: not yet checked
    assert index.manifest["tuning"] == record and added["HNSW32"] == 2000 and index.vectors.segment_items == 150
    index.add_vectors(keys(2150, 2400), x[2150:2400])  # +20% since the tuning: a check, no rebuild
    checked = index.manifest["tuning"]
    assert added["HNSW32"] == 2000 and checked["at"] == record["at"] and checked["count"] == 2000
    last = checked["probe"]["last"]
    assert checked["probe"]["count"] == 2400 and last["count"] == 2400 and last["param"] == "efSearch"
    assert last["after"] >= last["before"] == record["params"]["efSearch"]
    assert last["recall"] >= last["goal"] or last["after"] == tuning.EF_MAX
    assert index.params["efSearch"] == last["after"] == index.vectors.params["efSearch"]
    assert index.check()["ok"] and index.vectors.ntotal == 2400
    shown = index.info()["tuning"]["probe"]  # `latent info` leaves out the 1,000 pairs of ids
    assert "pairs" not in shown and shown["last"] == last
    index.close()


def test_a_merge_of_the_segments_into_the_graph_is_followed_by_a_check(tmp_path, monkeypatch, added):
    """Items in segments are searched exactly; once a merge puts them in the graph, recall can
    drop at once (GloVe growing by 10%: 0.986 before such a merge, 0.940 after it, with no
    check in between). A merge into the base therefore re-measures the probes, even when the
    growth since the last check is under 10%."""
    monkeypatch.setenv("LATENT_MERGE_MIN", "100")
    monkeypatch.setenv("LATENT_MERGE_RATIO", "0.05")
    x = clustered(2400)
    index = Index.create(tmp_path / "i", encoder="vectors:32", index_type="hnsw", target_recall=0.9)
    index.add_vectors(keys(0, 2000), x[:2000])
    assert index.manifest["tuning"]["probe"]["count"] == 2000
    index.add_vectors(keys(2000, 2150), x[2000:2150])  # +7.5%, past the 5% merge ratio: merged, then checked
    assert index.vectors.segment_items == 0 and added["HNSW32"] == 2150  # in the graph, added once each
    last = index.manifest["tuning"]["probe"]["last"]
    assert index.manifest["tuning"]["probe"]["count"] == 2150 and last["count"] == 2150
    assert last["recall"] >= last["goal"] or last["after"] == tuning.EF_MAX
    assert index.params["efSearch"] == last["after"] == index.vectors.params["efSearch"]
    index.close()


def test_a_check_raises_the_parameter_until_the_probes_reach_their_recall_and_never_lowers_it():
    x = clustered(3000, seed=1, clusters=200, noise=0.6)
    vindex = vx.VectorIndex.new("HNSW16", 32, params={"efConstruction": 40})
    vindex.add(np.arange(3000), x)
    pairs = tuning.probe_pairs(np.arange(3000), seed=3, count=300)
    probes = tuning.probe_queries(x[pairs[:, 0]], x[pairs[:, 1]])
    truth = vx.exact_topk(probes, x, tuning.K)[1]
    vindex.params["efSearch"] = 64
    goal = tuning.probe_recall(vindex, probes, truth)
    vindex.params["efSearch"] = 10  # as if the index had grown since it was tuned at 64
    low = tuning.probe_recall(vindex, probes, truth)
    assert low < goal - 0.02  # the data makes efSearch matter
    done = tuning.check(vindex, probes, truth, goal)
    assert done["before"] == 10 and done["after"] > 10 and done["goal"] > goal  # the goal with a margin
    assert done["recall"] >= done["goal"] and tuning.probe_recall(vindex, probes, truth) >= goal
    vindex.params["efSearch"] = 300
    assert tuning.check(vindex, probes, truth, goal)["after"] == 300  # never lowered by a check


def test_default_nprobe_grows_with_the_list_count():
    counts = [4, 64, 256, 1024, 4096, 16384, 65536]
    nprobes = [vx.default_nprobe(c) for c in counts]
    assert nprobes == sorted(nprobes) and all(1 <= p <= c for p, c in zip(nprobes, counts))
    assert nprobes[0] == 4  # few lists: all of them, an exhaustive search
    assert nprobes[-1] > 4 * nprobes[3]  # not a fixed number
    assert vx.VectorIndex.new("IVF1024,Flat", 32).params["nprobe"] == vx.default_nprobe(1024)
    assert vx.VectorIndex.new("IVF1024,Flat", 32, params={"nprobe": 7}).params["nprobe"] == 7  # a choice is kept
    assert vx.DEFAULT_PARAMS["nprobe"] is None  # stored as "scale with the lists" in new manifests


@pytest.mark.parametrize("nlist", [64, 512])
def test_ivf_at_its_default_nprobe_reaches_recall_09(nlist):
    x = clustered(40 * nlist + 500, seed=2, clusters=4 * nlist, noise=0.25)
    base, queries = x[:-500], x[-500:]
    vindex = vx.VectorIndex.new(f"IVF{nlist},Flat", 32)
    vindex.index.train(base)
    vindex.add(np.arange(len(base)), base)
    found = vindex.search(queries, 10)[1]
    truth = vx.exact_topk(queries, base, 10)[1]
    assert tuning.recall(found, truth, 10) >= 0.9
