"""Clusters: FAISS k-means over the stored vectors, the cluster of each item stored as a metadata
field (filterable, mappable: `latent map --color-by cluster`), and a summary of each cluster:
its size, its most central items and, for texts and words, a few words that set it apart.

    clustering = cluster(index, k=20, field="cluster")
    for c in clustering.clusters: print(c.id, c.size, c.central, c.words)
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from latent.indexer.errors import InputError
from latent.indexer.index import Index, Progress, _no_progress
from latent.indexer.vector_index import kmeans

from .dupes import Member, stored_vectors

CLUSTERS_MANIFEST = "clusters"  # manifest entry: {field: {"k", "seed", "where", "generation"}}
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORD = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]")


@dataclass
class Cluster:
    """One cluster: its number (the value stored in the field), its size, its most central items
    (highest cosine similarity to the centroid first) and, for texts and words, distinctive words."""

    id: int
    size: int
    central: list[Member]
    words: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"cluster": self.id, "size": self.size, "words": self.words,
                "central": [{"key": m.key, "score": round(float(m.score), 6), "text": m.text} for m in self.central]}


@dataclass
class Clustering:
    """What `cluster` did: the field written, how many items it labelled and changed, and whether
    it replaced values a user (not an earlier clustering) had put in that field."""

    field: str
    k: int
    items: int
    changed: int
    replaced_user_values: int
    clusters: list[Cluster]
    seconds_kmeans: float = 0.0

    def as_dict(self) -> dict:
        return {"field": self.field, "k": self.k, "items": self.items, "changed": self.changed,
                "replaced_user_values": self.replaced_user_values,
                "clusters": [c.as_dict() for c in self.clusters]}


def cluster(index: Index, *, k: int = 20, field: str = "cluster", where: str | None = None, seed: int = 0,
            niter: int = 20, top: int = 5, replace: bool = False, progress: Progress = _no_progress) -> Clustering:
    """Cluster the items (those matching `where`) into `k` groups by spherical FAISS k-means and
    store each item's cluster number (0 to k-1, the largest cluster 0) in its metadata `field`,
    through the ordinary write path (one transaction, a new generation). A field that items
    already hold and that no earlier clustering wrote is a user's: it is replaced only with
    `replace=True`, otherwise an InputError says how many items hold it."""
    if not isinstance(field, str) or not FIELD_NAME.match(field):
        raise InputError(f"the field name must be ASCII letters, digits and _, not starting with a digit; got {field!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"k must be a whole number of at least 2, got {k!r}")
    ids, vectors = stored_vectors(index, where)
    if len(ids) < k:
        raise InputError(f"{len(ids)} item(s){' match the filter' if where else ''}: too few for {k} clusters")
    rows = index.fetch(ids)
    ours = field in index.manifest.get(CLUSTERS_MANIFEST, {})
    held = sum(1 for r in rows.values() if isinstance(r["metadata"], dict) and field in r["metadata"])
    if held and not ours and not replace:
        raise InputError(f"{held} item(s) already have a metadata field {field!r} that latent cluster did not "
                         f"write; choose another field (--field) or replace it (--replace)")
    progress("k-means", 0, None)
    started = time.perf_counter()
    _, assigned, scores = kmeans(vectors, int(k), seed=seed, niter=niter)
    seconds = time.perf_counter() - started
    sizes = np.bincount(assigned, minlength=k)
    order = np.argsort(-sizes, kind="stable")  # cluster numbers by size: 0 is the largest
    number = np.empty(k, np.int64)
    number[order] = np.arange(k)
    labels = number[assigned]
    record = dict(index.manifest.get(CLUSTERS_MANIFEST, {}))
    record[field] = {"k": int(k), "seed": int(seed), "where": where, "generation": index.generation() + 1}
    progress("store", 0, len(ids))
    changed = index.update_metadata({int(i): {field: int(c)} for i, c in zip(ids, labels)},
                                    manifest={CLUSTERS_MANIFEST: record})
    progress("store", len(ids), len(ids))
    clusters = _summaries(ids, labels, scores, rows, k, top)
    return Clustering(field, int(k), len(ids), changed, 0 if ours else held, clusters, seconds)


def _summaries(ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, rows: dict, k: int,
               top: int) -> list[Cluster]:
    texts = [rows[int(i)]["text"] if rows[int(i)]["kind"] in ("text", "word") else None for i in ids]
    has_text = any(t for t in texts)
    words_of = [set(w.lower() for w in _WORD.findall(t)) if t else set() for t in texts]
    df_all = Counter(w for ws in words_of for w in ws)
    n = len(ids)
    out = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        best = members[np.argsort(-scores[members], kind="stable")[:top]]
        central = [Member(rows[int(ids[m])]["key"], float(scores[m]), int(ids[m]), rows[int(ids[m])]["kind"],
                          rows[int(ids[m])]["text"]) for m in best]
        words: list[str] = []
        if has_text:
            if all(rows[int(ids[m])]["kind"] == "word" for m in members):
                words = [m.text or m.key for m in central]
            else:
                df = Counter(w for m in members for w in words_of[m])
                # a word's share p of the cluster's items against its share q of all items: p*log(p/q),
                # high for words frequent here and rare elsewhere, low for words common everywhere
                rated = sorted(df, key=lambda w: (-_lift(df[w] / len(members), df_all[w] / n), w))
                words = [w for w in rated if df[w] > 1 or len(members) == 1][:top]
        out.append(Cluster(c, len(members), central, words))
    return out


def _lift(p: float, q: float) -> float:
    return p * math.log(p / q)


__all__ = ["Cluster", "Clustering", "cluster", "CLUSTERS_MANIFEST"]
