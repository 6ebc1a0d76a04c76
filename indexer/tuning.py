"""Search parameters tuned to a recall target, measured on held-out items.

How it works (`Index.tune`, and every rebuild of an index that has a target):

1. A random sample of the stored items (1,000, or a tenth of a small index) is held out: the
   vector index is built without them, so each one is a query the index has never seen, as
   a user's query is. (Querying items that are in the index measures something else: their
   own node leads the graph search straight to their neighbourhood. On GloVe HNSW32 such
   self-queries reach recall@10 0.979 at efSearch 32 where real held-out queries reach 0.910.)
2. While the index is built, their exact k nearest among the indexed items are found from the
   same blocks of stored vectors (brute force, no second read of the store).
3. The parameters are swept from cheap to dear, and the cheapest setting whose recall@k on the
   held-out queries reaches the goal is kept: the smallest efSearch (HNSW) or nprobe (IVF),
   and for compressed codes (PQ) the (nprobe, re-ranking depth) pair that is fastest on a
   timed run among those that reach it. The goal is the target plus two standard errors of
   the estimate (about 0.004 at 0.95 with 1,000 queries), so the recall of real queries lands
   at or just above the target rather than around it.
4. The held-out items are added to the index; the parameters and what was measured are stored
   in the manifest (`search_params`, `tuning`).

Nothing is built twice. Until its first tuning, an index with a target is searched exactly
(Flat, which adds cost only a copy): the approximate index is first built by the tuning build
itself, with the sample held out, instead of being built item by item during an add and then
rebuilt to hold one out.

As the index grows, the parameters a size needs drift (GloVe HNSW32 tuned at 200k items kept
recall 0.927 at 390k, under its 0.95 target). After each write that grew it by CHECK_GROWTH
(10%) since the last look, and after each merge of the segments into the base (whose items
were searched exactly in their segments until then, and now are in the graph or the lists), a
check re-measures recall without rebuilding anything:

- Its queries are probes that are in no graph and no list: normalised midpoints of pairs of
  stored items, fixed at tuning time (their ids are in the manifest). Held-out items cannot
  be reused, since they were added to the index once tuned.
- At tuning, the probes' recall at the chosen setting is recorded: the probe goal.
- A check finds the probes' exact neighbours now (brute force over the stored vectors) and
  raises efSearch or nprobe, never lowers it, until the probes reach that goal again, plus one
  standard error as a safety margin.

So the parameters track the growth that the held-out sample was tuned for. A full re-tune
(rebuild, new held-out sample, new probes) happens once the index has grown RETUNE_GROWTH (4x)
since it was tuned. Compressed codes (PQ) are re-tuned at that point only: their recall also
depends on the re-ranking depth, which a single-parameter check does not cover.
benchmarks/bench_build.py --growth measures both on indexes grown in batches of 10%.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from .errors import InputError
from .vector_index import planned_factory

K = 10
QUERIES = 1000
MIN_ITEMS = 1000  # fewer items: nothing is held out, the defaults stay
RETUNE_GROWTH = 4.0  # a full re-tune (rebuild with a new held-out sample) once grown this much
CHECK_GROWTH = 1.1  # a check of the probes (no rebuild) once grown this much since the last look
PROBES = 1000
EF_MAX = 4096
RERANK_DEPTHS = (1, 2, 4, 8, 16, 32)

Rerank = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def check_target(target) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < float(target) <= 1:
        raise InputError(f"the target recall must be a number above 0 and at most 1, such as 0.95; got {target!r}")
    return float(target)


def holdout_size(n: int) -> int:
    return 0 if n < MIN_ITEMS else min(QUERIES, n // 10)


def wants_retune(manifest: dict, n: int) -> bool:
    """True when an index with a recall target should be (re)built and tuned for n items (an
    index built exact, Flat, has nothing to tune)."""
    if manifest.get("target_recall") is None or n < MIN_ITEMS:
        return False
    if planned_factory(manifest["index_type"], n, int(manifest["dim"])) == "Flat":
        return False
    done = manifest.get("tuning") or {}
    if done.get("target_recall") != manifest["target_recall"] or not done.get("count"):
        return True
    return n >= RETUNE_GROWTH * done["count"]


def untuned(manifest: dict, factory: str) -> bool:
    """True when an index with a target would be built as `factory`, approximate, without a
    tuning of that target for it: such an index is kept exact (Flat) until the tuning build."""
    target = manifest.get("target_recall")
    if target is None or factory == "Flat":
        return False
    done = manifest.get("tuning") or {}
    return done.get("target_recall") != target or done.get("recall") is None or done.get("factory") in (None, "Flat")


def can_check(manifest: dict) -> bool:
    """True when the last tuning left probes for the index's current recall target."""
    done = manifest.get("tuning") or {}
    return bool(done.get("probe")) and manifest.get("target_recall") is not None \
        and done.get("target_recall") == manifest["target_recall"]


def wants_check(manifest: dict, n: int) -> bool:
    """True when the probes of the last tuning should be measured again at n items. (A merge of
    the segments into the base checks too, whatever the growth: see Index._maybe_merge.)"""
    return can_check(manifest) and n >= CHECK_GROWTH * manifest["tuning"]["probe"]["count"]


def probe_pairs(ids: np.ndarray, seed: int, count: int = PROBES) -> np.ndarray:
    """(count, 2) ids of distinct stored items whose midpoints are the probes."""
    rng = np.random.default_rng(seed)
    count = min(count, len(ids) // 2)
    return rng.choice(ids, size=2 * count, replace=False).reshape(count, 2)


def probe_queries(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Normalised midpoints of pairs of unit vectors (rows of `first` and `second`): queries
    near the data but at no stored item, so no search starts out next to its own answer."""
    mid = first + second
    norms = np.linalg.norm(mid, axis=1, keepdims=True)
    return (mid / np.where(norms > 0, norms, 1)).astype(np.float32)


def check_param(vindex) -> str | None:
    """The one search parameter a check may raise, or None when there is none (Flat, PQ)."""
    if vindex.lossy:
        return None
    return "efSearch" if vindex._hnsw is not None else "nprobe" if vindex._ivf is not None else None


def probe_recall(vindex, probes: np.ndarray, truth: np.ndarray, *, k: int = K) -> float:
    _, ids = vindex.search(probes, k)
    return recall(ids, truth, k)


def check(vindex, probes: np.ndarray, truth: np.ndarray, goal: float, *, k: int = K) -> dict:
    """Raise the index's search parameter (never lower it) until the probes' recall reaches
    `goal` plus one standard error (a safety margin: the probes are the same as at tuning, so
    a difference comes from the growth, not from drawing them again); return what was measured."""
    started = time.perf_counter()
    name = check_param(vindex)
    n = max(len(probes) * k, 1)
    want = min(1.0, goal + math.sqrt(goal * (1 - goal) / n))
    current = int(vindex.params[name])
    high = EF_MAX if name == "efSearch" else int(vindex._ivf.nlist)
    tried: list[dict] = []

    def measure(**params) -> float:
        vindex.params.update(params)
        value = probe_recall(vindex, probes, truth, k=k)
        tried.append({**params, "recall": round(value, 4)})
        return value

    got = measure(**{name: current})
    if got < want and current < high:
        best, got = _smallest(name, current, high, want, measure)
        vindex.params[name] = max(best, current)
    else:
        vindex.params[name] = current
    return {"param": name, "before": current, "after": int(vindex.params[name]), "recall": round(got, 4),
            "goal": round(want, 4), "tried": tried, "sweep_seconds": round(time.perf_counter() - started, 2)}


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's exact k nearest among its first k results."""
    return recall_among(found[:, :k], truth, k)


def recall_among(candidates: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's exact k nearest found anywhere among its candidates."""
    truth = truth[:, :k]
    hits = (truth[:, :, None] == candidates[:, None, :]).any(axis=2) & (truth >= 0)
    return float(hits.sum()) / truth.size


def goal_for(target: float, queries: int, k: int) -> float:
    """The target plus two standard errors of a recall measured on queries * k neighbours."""
    if target >= 1:
        return 1.0
    return min(1.0, target + 2 * math.sqrt(target * (1 - target) / max(queries * k, 1)))


def tune(vindex, queries: np.ndarray, truth: np.ndarray, target: float, rerank: Rerank, *, k: int = K) -> dict:
    """Set `vindex.params` to the cheapest setting reaching the goal; return what was measured."""
    started = time.perf_counter()
    goal = goal_for(target, len(queries), k)
    tried: list[dict] = []

    def measure(**params) -> float:
        vindex.params.update(params)
        depth = int(vindex.params["rerank"]) if vindex.lossy else 1
        _, ids = vindex.search(queries, k, candidates=k * depth)
        if vindex.lossy:
            _, ids = rerank(queries, ids, k)
        value = recall(ids, truth, k)
        tried.append({**params, "recall": round(value, 4)})
        return value

    if vindex._hnsw is not None:
        best, value = _smallest("efSearch", k, EF_MAX, goal, measure)
        chosen = {"efSearch": best}
    elif vindex._ivf is not None:
        nlist = int(vindex._ivf.nlist)
        if not vindex.lossy:
            best, value = _smallest("nprobe", 1, nlist, goal, measure)
            chosen = {"nprobe": best}
        else:
            chosen, value = _fastest_pq(vindex, queries, truth, nlist, goal, rerank, k, tried)
    else:  # no search parameters to tune (Flat is exact; other types are searched as they are)
        chosen, value = {}, measure()
    vindex.params.update(chosen)
    return {"target_recall": target, "goal": round(goal, 4), "recall": round(value, 4), "reached": value >= goal,
            "k": k, "queries": len(queries), "params": chosen, "tried": tried,
            "seconds": round(time.perf_counter() - started, 2)}


def _ladder(low: int, high: int, step: float = 1.25) -> list[int]:
    """low, then steps of about 25% (or `step`) up to high."""
    out, value = [low], low
    while value < high:
        value = min(high, max(value + 1, int(value * step)))
        out.append(value)
    return out


def _smallest(name: str, low: int, high: int, goal: float, measure) -> tuple[int, float]:
    """The smallest value of a parameter whose recall reaches the goal (recall grows with it):
    a ladder of ~25% steps, then a binary search inside the step that crosses it."""
    previous = None
    for value in _ladder(low, high):
        got = measure(**{name: value})
        if got >= goal:
            break
        previous = value
    else:
        return high, got  # not reached: the most thorough setting
    lo, hi, best = previous, value, got
    while lo is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        got_mid = measure(**{name: mid})
        if got_mid >= goal:
            hi, best = mid, got_mid
        else:
            lo = mid
    return hi, best


def _fastest_pq(vindex, queries, truth, nlist, goal, rerank, k, tried) -> tuple[dict, float]:
    """For each re-ranking depth, the smallest nprobe reaching the goal; then the fastest pair.

    After exact re-ranking, a query's recall is the share of its true k nearest among the
    k * depth candidates, and those are the first k * depth of a deeper search: one search per
    nprobe, at the deepest depth, measures every depth without reading a stored vector."""
    deepest = RERANK_DEPTHS[-1]
    found: dict[int, tuple[int, float]] = {}
    best_seen = 0.0
    for nprobe in _ladder(1, nlist, step=1.12):
        vindex.params.update(nprobe=nprobe, rerank=deepest)
        _, ids = vindex.search(queries, k, candidates=k * deepest)
        for depth in RERANK_DEPTHS:
            if depth in found:
                continue
            value = recall_among(ids[:, : k * depth], truth, k)
            best_seen = max(best_seen, value)
            tried.append({"nprobe": nprobe, "rerank": depth, "recall": round(value, 4)})
            if value >= goal:
                found[depth] = (nprobe, value)
        if RERANK_DEPTHS[0] in found or len(found) == len(RERANK_DEPTHS):
            break  # the shallowest depth reached it: deeper ones could not need fewer probes
    if not found:
        return {"nprobe": nlist, "rerank": deepest}, best_seen
    timed = []
    sample = queries[: min(len(queries), 300)]
    for depth, (nprobe, value) in found.items():
        vindex.params.update(nprobe=nprobe, rerank=depth)
        started = time.perf_counter()
        for q in sample:  # one at a time, as users query, with the real re-ranking from the store
            _, ids = vindex.search(q[None, :], k, candidates=k * depth)
            rerank(q[None, :], ids, k)
        timed.append((time.perf_counter() - started, {"nprobe": nprobe, "rerank": depth}, value))
    _, params, value = min(timed, key=lambda t: t[0])
    return params, value
