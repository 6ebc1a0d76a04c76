"""Segmented vector files (LSM-style, as Lucene, Milvus and LanceDB do): one base index plus
small delta segments, searched together.

- The base `vectors.faiss` is any index type (Flat, HNSW, IVF-PQ...); it is memory-mapped
  read-only where FAISS allows, and never changed in place.
- A write appends a segment `vectors-SINCE-GENERATION.seg`: an exact (Flat) index of the ids
  added in the store's generations (SINCE, GENERATION], and the ids deleted or replaced there
  (its tombstones). It never rewrites the base, so the bytes a write costs follow its batch.
- Segments of similar size merge into one (a log-structured tier: each holds at most half of
  the one before it), so a handful exist at any time.
- Once the segments hold more than `merge_ratio` of the base's items (and at least
  `merge_min`), or the index type the total calls for differs from the base's (the `auto`
  switch Flat -> HNSW -> IVF-PQ, an IVF type that can now train), they merge into a new base,
  in the writer: the segments' vectors are added to a copy of the base, or the base is built
  again from the store when its type changes. `latent compact` forces it.

Every file names the generation range it covers, so opening chains the base and the listed
segments (each must start where the one before ended); what is missing, damaged or unlisted
is caught up from the store, the source of truth. Item ids are never reused, so a tombstone
hides its id wherever it lives.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import vector_index as vx
from .vector_index import VectorIndex

SEGMENT = re.compile(r"vectors-(\d+)-(\d+)\.seg")
MERGE_RATIO = 0.1  # segments merge into the base past this share of its items ($LATENT_MERGE_RATIO)
MERGE_MIN = 10_000  # ... and past this many items ($LATENT_MERGE_MIN)
TIER = 2  # a segment merges with the one before it when that one is at most TIER times larger


def segment_name(since: int, generation: int) -> str:
    return f"vectors-{since:012d}-{generation:012d}.seg"


def merge_policy(manifest: dict | None = None) -> tuple[float, int]:
    """(merge ratio, minimum items) from the environment, else the manifest's `merge`, else the defaults."""
    stored = (manifest or {}).get("merge") or {}
    ratio = os.environ.get("LATENT_MERGE_RATIO")
    minimum = os.environ.get("LATENT_MERGE_MIN")
    return (float(ratio) if ratio else float(stored.get("ratio", MERGE_RATIO)),
            int(minimum) if minimum else int(stored.get("min", MERGE_MIN)))


@dataclass
class Segment:
    """A delta segment: the exact vectors added in (since, generation] and the ids removed there."""

    vindex: VectorIndex
    since: int
    generation: int
    removed: np.ndarray
    name: str | None = None  # its file once saved; None: in memory only (the open tail)
    crc: int | None = None
    raw: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids held, ascending

    @property
    def size(self) -> int:
        return self.vindex.ntotal + len(self.removed)

    def entry(self) -> dict:
        return {"name": self.name, "since": self.since, "generation": self.generation, "crc32": self.crc,
                "ntotal": self.vindex.ntotal}


def _flat(dim: int, params: dict) -> VectorIndex:
    flat = VectorIndex.new("Flat", dim)
    flat.params = params  # shared with the base: tuning and the manifest's parameters apply to all
    return flat


class SegmentedIndex:
    """The base VectorIndex plus delta segments, with the interface of one VectorIndex to searches."""

    def __init__(self, base: VectorIndex, *, base_saved: bool = False, base_crc: int | None = None):
        self.base = base
        self.base_saved = base_saved  # False: built in memory, not yet written
        self.base_crc = base_crc
        self.base_tombstones = np.asarray(base.tombstones, np.int64)  # the base's own hidden ids (HNSW)
        self.base_ids = np.sort(base._raw_ids())
        self.segments: list[Segment] = []
        self.generation = base.generation
        self.dead = np.zeros(0, np.int64)
        self._refresh_dead()

    # -- facts, as VectorIndex has them (searches and tuning read these) --------------------------
    # The base's own: its parameters (shared by the segments), factory, dimension, FAISS index,
    # HNSW and IVF parts, and whether its scores are lossy or exact (segments are exact, Flat).
    _FROM_BASE = frozenset({"params", "factory", "dim", "index", "_hnsw", "_ivf", "lossy", "exact"})

    def __getattr__(self, name: str):
        if name in SegmentedIndex._FROM_BASE:
            return getattr(self.__dict__["base"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def tombstones(self) -> np.ndarray:
        return self.dead

    @property
    def ntotal(self) -> int:
        return self.base.ntotal + sum(s.vindex.ntotal for s in self.segments)

    @property
    def live(self) -> int:
        return self.ntotal - len(self.dead)

    @property
    def segment_items(self) -> int:
        return sum(s.vindex.ntotal for s in self.segments)

    @property
    def saved_generation(self) -> int:
        saved = [s.generation for s in self.segments if s.name is not None]
        return saved[-1] if saved else self.base.generation

    def _parts(self) -> list[VectorIndex]:
        return [self.base, *(s.vindex for s in self.segments if s.vindex.ntotal)]

    def _raw(self) -> list[np.ndarray]:
        return [self.base_ids, *(s.raw for s in self.segments)]

    def _holds(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` some part holds (dead or not)."""
        found = np.zeros(len(ids), dtype=bool)
        for raw in self._raw():
            if len(raw):
                at = np.minimum(np.searchsorted(raw, ids), len(raw) - 1)
                found |= raw[at] == ids
        return found

    def _refresh_dead(self) -> None:
        removed = [self.base_tombstones, *(s.removed for s in self.segments)]
        dead = np.unique(np.concatenate(removed)) if any(len(r) for r in removed) else np.zeros(0, np.int64)
        self.dead = dead[self._holds(dead)] if len(dead) else dead
        for part in [self.base, *(s.vindex for s in self.segments)]:
            part.tombstones = self.dead

    def ids(self) -> np.ndarray:
        """The sorted item ids a search can return."""
        raw = np.sort(np.concatenate(self._raw()))
        return raw[~np.isin(raw, self.dead)] if len(self.dead) else raw

    def exact_vectors(self, ids: np.ndarray) -> np.ndarray | None:
        """The stored vectors of `ids` from the parts holding them uncompressed; None otherwise."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.lossy or not hasattr(self.base.index, "id_map"):
            return None
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        done = np.zeros(len(ids), dtype=bool)
        for raw, part in zip(self._raw(), [self.base, *(s.vindex for s in self.segments)]):
            if not len(raw):
                continue
            at = np.minimum(np.searchsorted(raw, ids), len(raw) - 1)
            mine = (raw[at] == ids) & ~done
            if mine.any():
                got = part.exact_vectors(ids[mine])
                if got is None:
                    return None
                out[mine], done[mine] = got, True
        return out if done.all() else None

    def wants_rebuild(self, spec: str, n: int) -> bool:
        return self.base.wants_rebuild(spec, n)

    def merge_due(self, spec: str, n: int, ratio: float, minimum: int) -> bool:
        """True when the segments should merge into the base: past the size ratio, or the base's
        index type is no longer the one the total calls for."""
        if not self.segments:
            return False
        items = self.segment_items + len(self.dead)
        return items >= max(minimum, ratio * self.base.ntotal) or self.base.wants_rebuild(spec, n)

    # -- searches ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               candidates: int | None = None, thorough: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """VectorIndex.search over the base and every segment, their best merged (the base's first of equal scores)."""
        parts = self._parts()
        if len(parts) == 1:
            return self.base.search(queries, k, allowed=allowed, candidates=candidates, thorough=thorough)
        found = [p.search(queries, k, allowed=allowed, candidates=candidates, thorough=thorough) for p in parts]
        scores = np.concatenate([s for s, _ in found], axis=1)
        ids = np.concatenate([i for _, i in found], axis=1)
        width = min(int(candidates or k), self.ntotal)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
        ids[~np.isfinite(scores)] = -1
        return scores, ids

    # -- writes (in memory) -------------------------------------------------------------------
    def _tail(self) -> Segment:
        if not self.segments or self.segments[-1].name is not None:
            since = self.saved_generation  # the open segment covers every generation since the last file
            self.segments.append(Segment(_flat(self.dim, self.params), since, self.generation, np.zeros(0, np.int64)))
        return self.segments[-1]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.asarray(ids, dtype=np.int64)
        tail = self._tail()
        tail.vindex.add(ids, vectors)
        tail.raw = np.union1d(tail.raw, ids)
        tail.vindex.tombstones = self.dead

    def remove(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        ids = ids[self._holds(ids) & ~np.isin(ids, self.dead)] if len(ids) else ids
        if len(ids) == 0:
            return
        tail = self._tail()
        tail.removed = np.union1d(tail.removed, ids)
        self._refresh_dead()

    def drop_unsaved(self) -> None:
        """Forget the open segment (a reader's catch-up from the store, which files now cover)."""
        if self.segments and self.segments[-1].name is None:
            self.segments.pop()
            self._refresh_dead()
        self.generation = self.saved_generation

    def attach(self, segment: Segment) -> None:
        """Add a segment loaded from its file (the next in the chain)."""
        segment.raw = np.sort(segment.vindex._raw_ids())
        segment.vindex.params = self.params
        self.segments.append(segment)
        self.generation = segment.generation
        self._refresh_dead()

    # -- merges (in memory; the caller writes the result) -------------------------------------
    def live_vectors(self, segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live items of `segments`, ascending."""
        ids = np.concatenate([s.raw for s in segments]) if segments else np.zeros(0, np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, self.dim), np.float32)
        parts = [s.vindex.index.reconstruct_batch(s.raw) for s in segments if len(s.raw)]
        vectors = np.concatenate(parts)
        keep = ~np.isin(ids, self.dead)
        order = np.argsort(ids[keep], kind="stable")
        return ids[keep][order], vectors[keep][order]

    def merged_tier(self, first: int, last: int) -> Segment:
        """One segment in place of segments[first..last] (consecutive, saved): their live vectors,
        and the tombstones of theirs that hide ids held elsewhere."""
        run = self.segments[first:last + 1]
        ids, vectors = self.live_vectors(run)
        flat = _flat(self.dim, self.params)
        flat.add(ids, vectors)
        held = np.concatenate([s.raw for s in run])
        removed = np.unique(np.concatenate([s.removed for s in run]))
        removed = removed[~np.isin(removed, held)]
        return Segment(flat, run[0].since, run[-1].generation, removed, raw=ids)

    def tier_run(self) -> tuple[int, int] | None:
        """The newest run of saved segments to merge (log-structured: each at least TIER times
        larger than the next), or None."""
        saved = [s for s in self.segments if s.name is not None]
        last = len(saved) - 1
        first = last
        while first >= 1 and saved[first - 1].size <= TIER * sum(s.size for s in saved[first:last + 1]):
            first -= 1
        return (first, last) if first < last else None

    def replace_run(self, first: int, last: int, merged: Segment) -> None:
        self.segments[first:last + 1] = [merged]
        self._refresh_dead()

    def merged_flat_base(self, path: Path, progress=None) -> VectorIndex | None:
        """merged_base for a Flat base, read from its file `path` a block at a time into an
        index allocated at its final size (see vector_index.merge_flat_file); None when the file
        is not laid out as expected or does not hold this base. `progress(done, total)`."""
        if self.base.factory != "Flat" or len(self.base_tombstones):
            return None
        ids, vectors = self.live_vectors(self.segments)  # ascending: the segments' order, as merged_base adds them
        total, done = self.base.ntotal + len(ids), 0

        def step(count: int) -> None:
            nonlocal done
            done += count
            if progress:
                progress(done, total)

        try:
            merged = vx.merge_flat_file(path, self.dead, ids, vectors, params=self.params, progress=step,
                                        holds=(self.base.generation, self.base.ntotal))
        except vx.IndexCorrupt:
            return None
        if merged is None:
            return None
        merged.params = self.params
        merged.generation = self.generation
        return merged

    def merged_base(self, writable: VectorIndex, progress=None) -> VectorIndex:
        """`writable` (a private copy of the base) with every segment merged into it: dead ids
        removed (hidden, for HNSW), live segment vectors added."""
        writable.tombstones = np.asarray(self.base_tombstones, np.int64)
        dead = self.dead[np.isin(self.dead, self.base_ids)]
        writable.remove(dead)
        for segment in self.segments:
            ids, vectors = self.live_vectors([segment])
            writable.add(ids, vectors)
            if progress:
                progress(len(ids))
        writable.generation = self.generation
        return writable


def listed_files(manifest: dict) -> list[dict]:
    """The segment files the manifest lists, oldest first."""
    entries = manifest.get("vectors_segments") or []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)
            and SEGMENT.fullmatch(e["name"]) and isinstance(e.get("since"), int) and isinstance(e.get("generation"), int)]


def load_chain(directory: Path, manifest: dict, *, params: dict | None, verify: bool | None,
               mmap: bool = True) -> tuple[SegmentedIndex, list[str]]:
    """The base and the listed segments that chain onto it; (index, problems met). IndexCorrupt
    when the base itself cannot be read. A listed segment that is missing or damaged ends the
    chain there (the caller catches up from the store); segments the base already covers (a merge
    whose manifest update a crash cut short) are passed over."""
    directory = Path(directory)
    base, header = vx.read_file(directory / vx.FILE_NAME, params=params, mmap=mmap, verify=verify)
    index = SegmentedIndex(base, base_saved=True, base_crc=header.get("crc32"))
    problems: list[str] = []
    for entry in listed_files(manifest):
        if entry["generation"] <= index.generation:
            continue
        if entry["since"] != index.generation:
            problems.append(f"{entry['name']} does not follow generation {index.generation}")
            break
        try:
            segment = load_segment(directory, entry, params, verify)
        except vx.IndexCorrupt as e:
            problems.append(str(e))
            break
        index.attach(segment)
    return index, problems


def load_segment(directory: Path, entry: dict, params: dict | None, verify: bool | None = True) -> Segment:
    """A listed segment file, checked; IndexCorrupt when it is missing, damaged or not what the list says."""
    part, head = vx.read_file(Path(directory) / entry["name"], params=params, verify=True if verify is None else verify)
    if (head.get("since"), head["generation"]) != (entry["since"], entry["generation"]):
        raise vx.IndexCorrupt(f"{entry['name']} holds generations {head.get('since')}..{head['generation']}, "
                              f"the manifest lists {entry['since']}..{entry['generation']}")
    return Segment(part, entry["since"], entry["generation"], part.tombstones, entry["name"], head["crc32"])


def follow(index: SegmentedIndex, directory: Path, manifest: dict, params: dict | None) -> bool:
    """Bring `index` forward by the segment files listed after its own (another process wrote
    them), without reading its base again. False when the listed files do not continue it (a
    merge made a new base, segments were merged): the caller loads them anew."""
    ours = [s.name for s in index.segments if s.name is not None]
    listed = listed_files(manifest)
    if manifest.get("vectors_crc32") != index.base_crc or [e["name"] for e in listed[:len(ours)]] != ours:
        return False
    index.drop_unsaved()
    for entry in listed[len(ours):]:
        if entry["since"] != index.generation:
            break
        try:
            index.attach(load_segment(directory, entry, params))
        except vx.IndexCorrupt:
            break
    return True


def remove_unlisted(directory: Path, manifest: dict) -> list[str]:
    """Delete segment files the manifest does not list (merged, or written by a killed writer);
    the caller holds the write lock. Returns their names."""
    listed = {e["name"] for e in listed_files(manifest)}
    gone = []
    for path in Path(directory).glob("vectors-*.seg"):
        if SEGMENT.fullmatch(path.name) and path.name not in listed:
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone
