"""The indexes being served and what the routes ask of them: the request Limits, each index's
lock, generation and caches (Served), opening and naming them, and the Api object that shapes
hits and steps, computes maps (one at a time, each in a thread of its own) and serves thumbnails
only of files that still hash as indexed."""

import asyncio
import io
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np
from starlette.concurrency import run_in_threadpool

from latent.indexer.builtin import open_index
from latent.indexer.images import ImageRefused, file_sha256, open_regular
from latent.indexer.errors import LatentError
from latent.indexer.index import Index

from ..dupes import find_duplicates
from ..maps import MapError, compute_map, label_text, thumbnail, unit_square
from ..query import Hit
from .errors import Busy, NotFound, ServeError, Stopping

SLOW_MAPS = {"tsne": "t-SNE", "umap": "UMAP"}  # methods whose time grows fast with the points: capped
MAP_RETRY_AFTER = 2  # seconds a client is asked to wait while another map computes


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each exceeded limit is a 4xx with a message."""

    max_upload_bytes: int = 20 * 2**20
    max_k: int = 1000
    max_text: int = 2000  # characters of q, expr, where and the terms of interpolate/analogy
    max_steps: int = 100  # interpolation points (at least 2)
    min_sample: int = 10  # points of a map
    max_sample: int = 20_000
    max_slow_map_sample: int = 5_000  # points of a t-SNE or UMAP map (20,000 took 107 s)
    max_dupes_items: int = 100_000  # items a duplicate search on the page may compare (100,000: ~1-2 min)
    max_dupes_groups: int = 200  # groups one answer shows, largest first
    thumbnail_sizes: tuple[int, int] = (16, 1024)  # a requested size is clamped into this range
    cached_maps: int = 8  # per index
    cached_thumbnails: int = 512

    def __post_init__(self) -> None:
        rules = {"max_upload_bytes": self.max_upload_bytes >= 1, "max_k": self.max_k >= 1,
                 "max_text": self.max_text >= 1, "max_steps": self.max_steps >= 2, "min_sample": self.min_sample >= 3,
                 "max_sample": self.max_sample >= self.min_sample,
                 "max_slow_map_sample": self.min_sample <= self.max_slow_map_sample <= self.max_sample,
                 "cached_maps": self.cached_maps >= 1,
                 "thumbnail_sizes": 1 <= self.thumbnail_sizes[0] <= self.thumbnail_sizes[1]}
        bad = [name for name, ok in rules.items() if not ok]
        if bad:
            raise ServeError(f"server limit {bad[0]} is out of range: {getattr(self, bad[0])!r}")


@dataclass
class Served:
    """One index being served: its lock, the generation it last saw, and caches tied to that generation."""

    name: str
    index: Index
    lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = -1
    kinds: dict[str, int] | None = None
    map_lock: threading.Lock = field(default_factory=threading.Lock)  # guards `maps` (held briefly)
    map_index: Index | None = None  # used by the one thread computing a map
    maps: OrderedDict = field(default_factory=OrderedDict)

    @contextmanager
    def using(self) -> Iterator[Index]:
        """The index, held by this thread and caught up with every commit so far (of any process)."""
        with self.lock:
            self._catch_up()
            yield self.index

    def _catch_up(self) -> None:
        generation = self.index.generation()
        if generation != self.generation:
            self.index.reload_manifest()
            self.generation, self.kinds = generation, None
        _ = self.index.vectors  # loads, or catches up with the store

    def state(self) -> tuple[int, int]:
        """The generation of the store and the number of items, caught up."""
        with self.using() as index:
            return self.generation, index.count()

    def thumbnail_url(self, item_id: int, kind: str) -> str | None:
        return f"/api/indexes/{quote(self.name, safe='@')}/items/{item_id}/thumbnail" if kind == "image" else None


def name_indexes(directories: list[str]) -> list[str]:
    """A name per directory: its basename (built-ins keep their @name), made unique with -2, -3..."""
    names: list[str] = []
    for directory in directories:
        text = str(directory)
        base = text if text.startswith("@") else (Path(text).resolve().name or "index")
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def open_served(directories: list[str], *, preload: bool = False, progress=None) -> dict[str, Served]:
    """Open every index (built-ins are built on first use) and load its vector index."""
    if not directories:
        raise ServeError("give at least one index directory (or a built-in index: @words, @sentences, @photos)")
    served = {}
    for name, directory in zip(name_indexes(directories), directories):
        index = open_index(directory, progress=progress) if progress else open_index(directory)
        _ = index.vectors
        if preload:
            _ = index.encoder
        served[name] = Served(name, index)
    return served


def summary(served: Served, *, detail: bool = False, public: bool = False) -> dict:
    """The listing of one index (with Index.info() when `detail`; a `public` server does not
    show where the index lives on its disk)."""
    with served.using() as index:
        if served.kinds is None:
            served.kinds = index.kind_counts()
        manifest = index.manifest
        out = {"name": served.name, "count": index.count(), "encoder": manifest["encoder"], "dim": manifest["dim"],
               "modalities": list(manifest.get("modalities") or index.encoder.modalities),
               "index_type": manifest["index_type"], "generation": served.generation, "kinds": served.kinds}
        if not detail:
            return out
        info = index.info()
        if public:
            del info["directory"]
        return {**info, **out}


def stored_item(served: Served, index: Index, item_id: int) -> dict:
    row = index.fetch([item_id]).get(item_id)
    if row is None:
        raise NotFound(f"no item with id {item_id} in {served.name}")
    return row


# -- thumbnails -------------------------------------------------------------------------------------------
def hashed_file_thumbnail(path: str, content_hash: str, size: int, cache: "LRU") -> bytes | None:
    """A JPEG thumbnail of the file at `path`, or None unless its bytes hash (SHA-256) to
    `content_hash`. The file is opened once (no FIFO, no device), hashed and decoded from
    that one descriptor, so a file swapped later (for a symlink, or other bytes) is refused.
    Thumbnails are cached by content hash and size; the file is hashed on every call."""
    try:
        with open_regular(path) as f:
            if file_sha256(f) != content_hash:
                return None
            data = cache.get((content_hash, size))
            if data is None:
                f.seek(0)
                data = _jpeg(thumbnail(f, size))
    except (ImageRefused, OSError):
        return None
    if data is not None:
        cache.put((content_hash, size), data)
    return data


def _jpeg(picture) -> bytes | None:
    if picture is None:
        return None
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=85)
    return out.getvalue()


class LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


# -- what the routes call -----------------------------------------------------------------------------------
class Api:
    """What the routes call: the served indexes, the limits and the caches."""

    def __init__(self, served: dict[str, Served], limits: Limits, *, public: bool = False):
        self.served, self.limits, self.public = served, limits, public
        self.thumbnails = LRU(limits.cached_thumbnails)
        self.map_slot = threading.Lock()  # held by the thread computing a map
        self.computing: tuple[str, str, int, float] = ("", "", 0, 0.0)  # index, method, points, monotonic start

    def get(self, name: str) -> Served:
        served = self.served.get(name)
        if served is None:
            raise NotFound(f"no index named {name!r}; this server has: {', '.join(self.served)}")
        return served

    def hits(self, served: Served, hits: list[Hit], started: float, min_score: float | None = None) -> dict:
        kept = [h for h in hits if min_score is None or h.score >= min_score]
        return {"hits": [{"rank": h.rank, "id": h.id, "key": h.key, "score": h.score, "kind": h.kind, "text": h.text,
                          "metadata": h.metadata, "thumbnail": served.thumbnail_url(h.id, h.kind)} for h in kept],
                "took_ms": round((time.perf_counter() - started) * 1000, 3)}

    def duplicates(self, served: Served, threshold: float, where: str | None, started: float) -> dict:
        """The groups of near-duplicates (largest first, at most max_dupes_groups) with thumbnails."""
        with served.using() as index:
            allowed = index.matching_ids(where)
            n = index.count() if allowed is None else len(allowed)
            if n > self.limits.max_dupes_items:
                raise LatentError(f"{served.name} has {n:,} items{' matching the filter' if where else ''}; the page "
                                  f"finds duplicates among at most {self.limits.max_dupes_items:,}: narrow them with "
                                  "a filter, or run `latent dupes` on the command line")
            groups = find_duplicates(index, threshold=threshold, where=where)
        shown = groups[:self.limits.max_dupes_groups]
        return {"groups": [{"representative": g.representative.key, "size": g.size, "min_score": g.min_score,
                            "items": [{"id": m.id, "key": m.key, "score": m.score, "kind": m.kind, "text": m.text,
                                       "metadata": m.metadata, "thumbnail": served.thumbnail_url(m.id, m.kind)}
                                      for m in g.members]} for g in shown],
                "total_groups": len(groups), "items_in_groups": sum(g.size for g in groups),
                "took_ms": round((time.perf_counter() - started) * 1000, 3)}

    def steps(self, served: Served, index: Index, path, started: float) -> dict:
        ids = {key: found[0] for key, found in index.lookup([s.key for s in path]).items()}
        return {"steps": [{"t": s.t, "first": s.first, "last": s.last, "id": ids.get(s.key, 0), "key": s.key,
                           "score": s.score, "kind": s.kind, "text": s.text, "metadata": s.metadata,
                           "thumbnail": served.thumbnail_url(ids.get(s.key, 0), s.kind)} for s in path],
                "took_ms": round((time.perf_counter() - started) * 1000, 3)}

    async def map(self, served: Served, method: str, sample: int) -> dict:
        """The map of (method, sample): from the cache while the store's generation is the same, else
        computed in a thread of its own. One map computes at a time on a server; a request for
        another meanwhile is refused (Busy, with a time to retry) rather than queued, so map requests
        hold no worker thread that other routes need, and never hold up a shutdown."""
        generation, count = await run_in_threadpool(served.state)
        n = min(sample, count)
        with served.map_lock:
            cached = served.maps.get((method, n))
            if cached is not None and cached["generation"] == generation:
                served.maps.move_to_end((method, n))
                return cached
        slow = SLOW_MAPS.get(method)
        if slow and n > self.limits.max_slow_map_sample:
            raise MapError(f"a {slow} map on this server takes at most {self.limits.max_slow_map_sample:,} points "
                           f"(this one would have {n:,}); ask for sample={self.limits.max_slow_map_sample} or "
                           f"fewer, or use method=pca (up to {self.limits.max_sample:,} points)")
        if not self.map_slot.acquire(blocking=False):
            name, what, points, started = self.computing
            raise Busy(f"a map is being computed on this server ({what} of {points:,} points of {name}, "
                       f"started {time.monotonic() - started:.0f} s ago) and it computes one at a time; "
                       f"try again in a few seconds", retry_after=MAP_RETRY_AFTER)
        self.computing = (served.name, slow or method.upper(), n, time.monotonic())
        try:
            return await in_own_thread(self._computed_map, served, method, sample)
        except asyncio.CancelledError:  # only a stopping server cancels a request: answer it, not a 500
            asyncio.current_task().uncancel()
            raise Stopping("the server is stopping; this map was not finished") from None

    def _computed_map(self, served: Served, method: str, sample: int) -> dict:
        """Compute, cache and return a map, then free the map slot (taken by the caller)."""
        try:
            if served.map_index is None:  # a second handle, so a long map does not hold up searches
                served.map_index = Index.open(served.index.directory)
            index = served.map_index
            generation = index.generation()
            doc = self._map_doc(served, compute_map(index, method=method, sample=sample), generation)
            with served.map_lock:
                served.maps[(method, doc["count"])] = doc
                while len(served.maps) > self.limits.cached_maps:
                    served.maps.popitem(last=False)
            return doc
        finally:
            self.map_slot.release()

    @staticmethod
    def _map_doc(served: Served, m, generation: int) -> dict:
        xy = np.clip(np.round(unit_square(m.coords), 5), 0.0, 1.0)
        points = [{"id": int(m.ids[i]), "key": m.keys[i], "x": float(xy[i, 0]), "y": float(xy[i, 1]),
                   "kind": m.kinds[i], "text": m.texts[i], "label": label_text(m, i),
                   "thumbnail": served.thumbnail_url(int(m.ids[i]), m.kinds[i])} for i in range(len(m))]
        return {"method": m.method, "generation": generation, "count": len(points), "total": m.total,
                "explained_variance": list(m.explained_variance) if m.explained_variance else None,
                "seconds": round(m.seconds, 3), "points": points}

    def thumbnail(self, served: Served, item_id: int, size: int) -> bytes:
        with served.using() as index:
            row = stored_item(served, index, item_id)
            found = index.lookup([row["key"]]).get(row["key"])
        if row["kind"] != "image" or not row["path"] or found is None or found[0] != item_id:
            raise NotFound(f"item {item_id} of {served.name} is not an image")
        data = hashed_file_thumbnail(row["path"], found[1], size, self.thumbnails)
        if data is None:
            raise NotFound(f"the image of item {item_id} is no longer readable as it was indexed "
                           "(moved, changed or replaced); add it again")
        return data


async def in_own_thread(function, *args):
    """await function(*args) run in a new daemon thread, outside the worker threads of the routes: a
    cancelled wait (a shutdown) returns at once and leaves the thread to finish alone."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, error) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = function(*args), None
        except BaseException as e:  # handed to the awaiting request
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop has closed: the server stopped meanwhile
            pass

    threading.Thread(target=run, name="latent-map", daemon=True).start()
    return await future
