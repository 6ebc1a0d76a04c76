"""Near-duplicates: groups of items whose vectors are at least a cosine threshold apart from one
another (connected through such pairs), each with a representative, and the folding of
near-identical hits of a search into one.

    groups = find_duplicates(index, threshold=0.95, where="lang=en")
    hits = collapse_hits(index, hits, threshold=0.95)      # hit.folded: the keys folded into it

Pairs come from an exact FAISS range search over the stored vectors (indexer.vector_index.
pairs_above), groups from the connected components of those pairs (scipy), never a Python
loop over pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latent.indexer.errors import InputError
from latent.indexer.index import Index, Progress, _no_progress
from latent.indexer.vector_index import pairs_above

from .query import MAX_K, Hit

DEFAULT_THRESHOLD = 0.95


@dataclass
class Member:
    """An item of a duplicate group: its key, its cosine similarity to the group's representative,
    its text and metadata."""

    key: str
    score: float
    id: int = 0
    kind: str = "text"
    text: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class DuplicateGroup:
    """Items connected by pairs at or above the threshold. `members[0]` is the representative:
    the member nearest to the group's mean direction (the earliest key on a tie)."""

    members: list[Member]
    min_score: float  # the lowest similarity of a linking pair of the group

    @property
    def representative(self) -> Member:
        return self.members[0]

    @property
    def size(self) -> int:
        return len(self.members)

    def as_dict(self) -> dict:
        return {"representative": self.representative.key, "size": self.size,
                "min_score": round(float(self.min_score), 6),
                "items": [{"key": m.key, "score": round(float(m.score), 6), "id": m.id, "kind": m.kind,
                           "text": m.text, "metadata": m.metadata} for m in self.members]}


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise InputError(f"the threshold is a cosine similarity above 0 and at most 1, got {threshold!r}")
    return float(threshold)


def stored_vectors(index: Index, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, their stored vectors) of every item, or of those matching `where`, read in
    one snapshot of the store."""
    with index.snapshot():
        allowed = index.matching_ids(where)
        ids = index.ids() if allowed is None else np.sort(np.asarray(allowed, dtype=np.int64))
        return ids, index.vectors_of(ids) if len(ids) else np.empty((0, index.dim), np.float32)


def find_duplicates(index: Index, *, threshold: float = DEFAULT_THRESHOLD, where: str | None = None,
                    progress: Progress = _no_progress) -> list[DuplicateGroup]:
    """Groups of two or more items linked by pairs with cosine similarity >= `threshold` (among
    the items matching `where`), largest first. Linking is transitive (single linkage): A~B and
    B~C put A, B and C in one group even when A and C are further apart."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    threshold = check_threshold(threshold)
    ids, vectors = stored_vectors(index, where)
    n = len(ids)
    progress("dupes", 0, n)
    first, second, scores = pairs_above(vectors, threshold, progress=lambda rows: progress("dupes", rows, n))
    if not len(first):
        return []
    graph = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    in_pair = np.zeros(n, bool)
    in_pair[first] = in_pair[second] = True
    rows = np.flatnonzero(in_pair)
    order = rows[np.argsort(label[rows], kind="stable")]
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    weakest = np.full(label.max() + 1, np.inf, np.float32)
    np.minimum.at(weakest, label[first], scores)
    stored = index.fetch(ids[order])
    groups = []
    for members in np.split(order, bounds):
        mean = vectors[members].sum(axis=0)
        central = vectors[members] @ (mean / (np.linalg.norm(mean) or 1.0))
        keys = [stored[int(ids[m])]["key"] for m in members]
        best = min(range(len(members)), key=lambda i: (-round(float(central[i]), 6), keys[i]))
        to_rep = vectors[members] @ vectors[members[best]]
        items = [Member(keys[i], float(to_rep[i]), int(ids[m]), stored[int(ids[m])]["kind"],
                        stored[int(ids[m])]["text"], stored[int(ids[m])]["metadata"]) for i, m in enumerate(members)]
        rep = items.pop(best)
        items.sort(key=lambda m: (-m.score, m.key))
        groups.append(DuplicateGroup([rep, *items], float(weakest[label[members[0]]])))
    groups.sort(key=lambda g: (-g.size, g.representative.key))
    return groups


def collapse_hits(index: Index, hits: list[Hit], *, threshold: float = DEFAULT_THRESHOLD,
                  k: int | None = None) -> list[Hit]:
    """Fold each hit whose cosine similarity to a better-ranked kept hit, or to a hit already
    folded into one, is >= `threshold` into that kept hit (linked as find_duplicates links
    them); `hit.folded` lists the keys folded into it. Keep at most `k` and renumber ranks."""
    threshold = check_threshold(threshold)
    if not hits:
        return hits
    vectors = index.vectors_of([h.id for h in hits])
    near = (vectors @ vectors.T) >= threshold  # k hits, not N items: a small matrix
    owner = np.arange(len(hits))
    for i in range(1, len(hits)):
        linked = np.flatnonzero(near[i, :i])
        if len(linked):
            owner[i] = owner[linked].min()  # the best-ranked kept hit it is linked to
    kept = [i for i in range(len(hits)) if owner[i] == i]
    out = []
    for rank, i in enumerate(kept[:k] if k else kept, start=1):
        hit = hits[i]
        hit.rank = rank
        hit.folded = [hits[j].key for j in np.flatnonzero(owner == i) if j != i]
        out.append(hit)
    return out


def distinct_hits(index: Index, find, *, k: int, threshold: float = DEFAULT_THRESHOLD) -> list[Hit]:
    """k hits of `find(n)` (a search returning its n best hits) with near-identical ones folded
    (see collapse_hits): asks for 4k, and for 4 times more while folding leaves fewer than k."""
    want = 4 * k
    while True:
        n = min(want, MAX_K)
        hits = find(n)
        kept = collapse_hits(index, hits, threshold=threshold, k=k)
        if len(kept) >= k or len(hits) < n or n == MAX_K:
            return kept
        want *= 4


__all__ = ["distinct_hits", "DuplicateGroup", "Member", "find_duplicates", "collapse_hits", "stored_vectors", "DEFAULT_THRESHOLD"]
