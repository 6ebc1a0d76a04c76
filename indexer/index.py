"""An index directory: the store (SQLite, source of truth), the vector index (FAISS,
derived) and the writer lock. Opening catches a stale vector index up with the store
(or rebuilds it) before any query; every write goes through here. One Index object may be
shared by threads: reads in a snapshot, writes one thread at a time (see Index)."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import failpoints, tuning
from . import segments as sg
from . import vector_index as vx
from .encoders import Encoder, canonical_name, encoder_spec, get_encoder, normalize
from .encoders.base import IMAGE_ENCODERS, TEXT_ENCODERS
from .errors import (EncoderMismatch, IndexCorrupt, IndexExists, IndexNotFound, InputError, KeywordQueryError,
                     LatentError, OutOfVocabulary, StorageError)
from .filters import filter_fields, parse_where
from .images import ImageRefused, prefetch, prepare
from .lock import ReadWriteLock, WriteLock, env_seconds
from .readers import as_items, records_from_texts
from .records import Item, Record, Skip, SkipTally, content_hash
from .store import DB_NAME, SeenKeys, Store

Progress = Callable[[str, int, "int | None"], None]  # (stage, advanced by, total or None)
OnCommit = Callable[[int, int], None]  # (generation, items in the batch), once the batch is durable
SAVE_EVERY_S: float | None = None  # how often a long add saves vectors.faiss; None: $LATENT_SAVE_EVERY_S or 60
SKIP_CHUNK = 10_000  # skips written to the store together, in one transaction


@dataclass
class IngestReport:
    """What one `add` did. `committed` lists (generation, items) per committed batch; `skips`
    counts the inputs left out per reason and keeps a few of each as examples (all of them
    are recorded in the store's skipped table as they come, not held in memory)."""

    added: int = 0
    replaced: int = 0
    metadata_updated: int = 0
    unchanged: int = 0
    skips: SkipTally = field(default_factory=SkipTally)
    committed: list[tuple[int, int]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """How many inputs were left out."""
        return self.skips.total

    def skip_counts(self) -> dict[str, int]:
        """{reason: inputs left out for it}, most first."""
        return self.skips.counts()

    def skip_examples(self) -> list[Skip]:
        """Up to SKIP_EXAMPLES skips per reason, in input order."""
        return self.skips.examples()

    def as_dict(self) -> dict:
        return {
            "added": self.added, "replaced": self.replaced, "metadata_updated": self.metadata_updated,
            "unchanged": self.unchanged, "skipped": self.skipped, "batches": len(self.committed),
            "skip_reasons": self.skip_counts(),
            "skipped_lines": [{"source": s.source, "line": s.line, "reason": s.reason} for s in self.skip_examples()],
        }


def _no_progress(stage: str, n: int, total: int | None) -> None:
    pass


MAX_METADATA_DEPTH = 64  # nested objects/lists in one item's metadata (SQLite's JSON functions stop at 1,000)


def _unstorable(value) -> str | None:
    """Why a metadata value cannot be stored faithfully, or None: a NUL character (SQLite's JSON
    functions end text there, so filters would match the text cut short), a lone surrogate (not
    Unicode text: it cannot be written as UTF-8), or nesting deeper than MAX_METADATA_DEPTH."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\0" in item:
                return "metadata cannot contain NUL characters (U+0000): SQLite's JSON functions end text there"
            if not _is_unicode(item):
                return f"metadata holds text that is not valid Unicode (a lone surrogate) in {_shown(item)}"
            continue
        if isinstance(item, (dict, list)):
            if depth > MAX_METADATA_DEPTH:
                return f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str, width: int = 40) -> str:
    return ascii(text if len(text) <= width else text[:width] + "...")


# one encoder for every item (json.dumps with options makes a new one per call)
_METADATA_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, allow_nan=False)


def metadata_json(metadata) -> str:
    """Canonical JSON text of a metadata dict; InputError when it is not a JSON object of
    finite values, or holds what `_unstorable` refuses."""
    if not isinstance(metadata, dict):
        raise InputError(f"metadata must be a dict, not {type(metadata).__name__}")
    if not metadata:
        return "{}"
    problem = _unstorable(metadata)
    if problem:
        raise InputError(problem)
    try:
        return _METADATA_ENCODER.encode(metadata)
    except (TypeError, ValueError) as e:
        raise InputError(f"metadata cannot be stored as JSON ({e})") from None


def _duplicate(rec: Record, key: str, first: Record | None) -> str:
    """The reason a later row of one input with the key of an earlier row is not stored."""
    if first is None or first.line is None:
        where = "an earlier row"
    else:
        where = f"line {first.line}" if first.source == rec.source else f"{first.source}:{first.line}"
    if rec.key is None:  # keyed by the hash of its text
        return (f"the same text as {where} of this input, stored once (rows without a key are keyed by their "
                "text; give each row a key to store both)")
    return f"duplicate key {key!r}: {where} of this input has it, and the first row is kept"


class Index:
    """A latent index directory. Use `Index.create` or `Index.open`.

    Threads may share one Index object. Each reads the store through its own connection; a
    search reads inside `snapshot()`, which holds the vector index (shared with other readers)
    at the snapshot's generation. A write takes the write lock (one thread, one process at a
    time) and changes the vector index only together with its commit, while no reader holds it."""

    def __init__(self, directory: Path, store: Store):
        self.directory = Path(directory)
        self.store = store
        self.manifest = store.manifest()
        self._vectors: sg.SegmentedIndex | None = None
        self._encoder: Encoder | None = None
        self._encoder_lock = threading.Lock()
        self._lock = WriteLock(self.directory)
        self._guard = ReadWriteLock(self._write_in_snapshot)  # over self._vectors: searches share, writes exclude
        self.recovered: str | None = None  # what opening had to repair, if anything
        self._tuned: dict | None = None  # measured by the last build with tuning, until stored
        self._pending_skips: list[tuple[str, int | None, str]] = []  # counted, not yet in the store

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | Path, *, encoder: str | Encoder = "minilm", index_type: str = "auto",
               params: dict | None = None, target_recall: float | None = None,
               runtime: str | None = None) -> "Index":
        """Create an empty index in `directory` (created if needed; must not hold an index).

        The bundled networks run on `runtime` (onnx or torch; default $LATENT_RUNTIME, else
        onnx), recorded in the manifest: the index's queries use it. Their models are not loaded here.

        With `target_recall`, search parameters are tuned to reach that recall@10 on held-out
        items whenever the vector index is built as an approximate type (exact until then), checked
        without a rebuild each time it has grown 10%, and re-tuned once it has grown 4x (see
        indexer/tuning.py)."""
        directory = Path(directory)
        if target_recall is not None:
            target_recall = tuning.check_target(target_recall)
        if Store.holds_store(directory):
            raise IndexExists(f"{directory} already holds an index; open it, or choose another directory")
        enc = encoder_spec(encoder, runtime) if isinstance(encoder, str) else encoder.to_spec()
        vx.validate_spec(index_type, enc.dim)
        directory.mkdir(parents=True, exist_ok=True)
        with WriteLock(directory):
            if Store.holds_store(directory):  # again under the lock: another create may have won
                raise IndexExists(f"{directory} already holds an index (created by another process meanwhile); "
                                  "open it, or choose another directory")
            store = Store.create(directory, {
                "encoder": enc.name, "encoder_version": enc.version, "dim": enc.dim,
                "modalities": list(enc.modalities), "runtime": enc.runtime, "metric": "ip", "index_type": index_type,
                "search_params": {**vx.DEFAULT_PARAMS, **(params or {})}, "target_recall": target_recall,
            })
            index = cls(directory, store)
            index._encoder = encoder if isinstance(encoder, Encoder) else None
            index._vectors = sg.SegmentedIndex(index._build_vectors())
            index._save_vectors()
        return index

    @classmethod
    def open(cls, directory: str | Path) -> "Index":
        """Open an existing index. The vector index is loaded (and repaired) on first use."""
        directory = Path(directory)
        if not (directory / DB_NAME).exists():
            raise IndexNotFound(f"no latent index in {directory}; create one with `latent create {directory}`")
        return cls(directory, Store.open(directory))

    def close(self) -> None:
        self._lock.release()
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- facts ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder_name(self) -> str:
        return self.manifest["encoder"]

    @property
    def index_type(self) -> str:
        return self.manifest["index_type"]

    @property
    def params(self) -> dict:
        return self.manifest.get("search_params", {})

    def count(self) -> int:
        return self.store.count()

    @property
    def encoder(self) -> Encoder:
        """The index's own encoder, loaded on first use (once, whichever thread asks first)."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    encoder = get_encoder(self.encoder_name, self.manifest.get("runtime"),
                                          version=self.manifest.get("encoder_version"))
                    self.check_encoder(encoder)
                    self._encoder = encoder
        return self._encoder

    def check_encoder(self, encoder: Encoder | str) -> None:
        """Raise EncoderMismatch unless `encoder` is the one this index was built with."""
        name = canonical_name(encoder) if isinstance(encoder, str) else encoder.name
        if name != self.encoder_name:
            raise EncoderMismatch(
                f"{self.directory} was built with encoder {self.encoder_name!r} ({self.dim}-d), not {name!r}; "
                f"use the encoder {self.encoder_name!r} or another index"
            )
        if not isinstance(encoder, str) and encoder.dim != self.dim:
            raise EncoderMismatch(
                f"encoder {name!r} gives {encoder.dim}-d vectors but {self.directory} holds {self.dim}-d ones"
            )

    def check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise EncoderMismatch(
                f"vectors of shape {vectors.shape} do not fit {self.directory}: its encoder "
                f"{self.encoder_name!r} makes {self.dim}-d vectors"
            )
        return vectors

    # -- reading the store (the search side reads through these, never the store itself) -----
    def snapshot(self, *, vectors: bool = False, lazy: bool = False) -> "_Snapshot":
        """A context in which every read of this thread sees one committed generation of the
        store, and `vectors` is the vector index at that generation (loaded first with
        `vectors=True`; otherwise only if it is loaded already): no write, of any thread,
        changes either until it ends. A snapshot inside a snapshot of the same thread is the
        same one; a thread cannot write inside its own snapshot.

        `lazy` (the query path): when the store is known unchanged since the loaded vector index's
        generation without a statement (Store.unchanged_since), the snapshot runs no statement
        until it needs one, and its first raises store.SnapshotMoved if a write came between:
        the caller then starts again with a plain snapshot."""
        return _Snapshot(self, vectors, lazy)

    def _write_in_snapshot(self) -> LatentError:
        return LatentError(f"cannot write to {self.directory} inside a snapshot of it in the same thread: the "
                           "snapshot holds one generation until it ends; write after the snapshot")

    def _loaded_in_snapshot(self) -> sg.SegmentedIndex:
        if self._vectors is None:
            raise LatentError(f"the vector index of {self.directory} is not loaded in this snapshot; "
                              "open the snapshot with snapshot(vectors=True)")
        return self._vectors

    def generation(self) -> int:
        """The store's generation: it grows with every committed write."""
        return self.store.generation()

    def reload_manifest(self) -> dict:
        """Read the manifest again (another process may have tuned or rebuilt the index)."""
        self.manifest = self.store.manifest()
        return self.manifest

    def ids(self) -> np.ndarray:
        """The ids of every item, ascending."""
        return self.store.ids()

    def matching_ids(self, where: str | None, generation: int | None = None) -> np.ndarray | None:
        """Ids of the items a filter matches (None: no filter); with the store's `generation`, read
        in the caller's snapshot, a filter used again in that generation is answered from memory."""
        if where is None or not where.strip():
            return None
        sql, params = parse_where(where)
        return self.store.ids_where(sql, params, generation)

    def keyword_ids(self, match: str, k: int, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, BM25 scores) of the k best items for an FTS5 MATCH expression (bound as a
        parameter, never pasted into SQL) among those `where` matches; see Store.keyword_search."""
        if not self.store.has_keyword_index():
            raise KeywordQueryError(
                f"{self.directory} has no keyword index yet: it was made by an older latent and this process may only "
                f"read it; open it once with write access (any command, e.g. `latent info {self.directory}`) "
                "to build it, or search with mode vector")
        where_sql = parse_where(where) if where is not None and where.strip() else None
        return self.store.keyword_search(match, k, where_sql)

    def has_keyword_texts(self) -> bool:
        """Whether any item has a text that keyword search reads (words and images have none)."""
        return self.store.has_keyword_texts()

    def explain_no_match(self, where: str) -> str | None:
        """Why a filter that matched nothing could never match: the fields it names that no item
        has, and the fields items have; None when every field it names exists. A filter on an
        absent field is a valid query (it matches nothing); callers that show results to a person
        (the CLI) say this instead of an empty answer."""
        absent = self.store.fields_absent(filter_fields(where))
        if not absent:
            return None
        known = self.store.metadata_fields()
        return (f"no item of {self.directory.name} has the field{'s' if len(absent) > 1 else ''} "
                f"{', '.join(map(repr, absent))}; "
                + (f"its items have: {', '.join(known)}" if known else "its items have no metadata"))

    def lookup(self, keys: Sequence[str]) -> dict[str, tuple[int, str, str]]:
        """{key: (id, kind, content hash)} of the keys that are stored."""
        return self.store.lookup(keys)

    def keys_with_content(self, hashes: Sequence[str]) -> dict[str, str]:
        """{content hash: key} of stored items with those content hashes (an image's SHA-256)."""
        return self.store.keys_of_hashes(hashes)

    def fetch(self, ids: Sequence[int]) -> dict[int, dict]:
        """{id: {key, kind, text, path, metadata, ...}} of the ids that are stored."""
        return self.store.fetch(ids)

    def rows(self, ids: Sequence[int], generation: int) -> dict[int, tuple]:
        """{id: (key, kind, text, path, metadata)}, kept in memory for `generation` (the hot path)."""
        return self.store.cached_rows(ids, generation)

    def vector_of(self, key: str) -> np.ndarray | None:
        """The stored vector of an item, or None when no item has that key."""
        return self.store.vector_of_key(key, self.dim)

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of items, in the order of `ids`."""
        return self.store.vectors(ids, self.dim)

    def kind_counts(self) -> dict[str, int]:
        """How many items of each kind (text, word, image) the index holds."""
        return self.store.kind_counts()

    # -- the vector index ---------------------------------------------------------------------
    @property
    def vectors(self) -> sg.SegmentedIndex:
        """The vector index, current with the store (loaded, caught up or rebuilt as needed);
        inside a snapshot, the one at the snapshot's generation. Threads sharing this object
        search it inside a snapshot: outside one, a write of another thread may change it."""
        if self._guard.sharing():
            return self._loaded_in_snapshot()
        with self.snapshot(vectors=True):
            return self._vectors

    def _current_vectors(self) -> sg.SegmentedIndex:
        """The vector index loaded, or caught up with writes made since (by another process);
        under the exclusive lock of self._guard. After another process merged its segments into a
        new base, the new files are loaded (the base memory-mapped) instead of catching up."""
        if self._vectors is None:
            self._vectors = self._load_vectors()
        elif self.store.generation() != self._vectors.generation:
            self._follow_files()
        return self._vectors

    def _follow_files(self) -> None:
        """Take in the vector files another process (or handle) wrote since ours were read: new
        segments are loaded and attached; after a merge (a new base) or merged segments, the files
        are read anew (the base memory-mapped). What no file holds yet is caught up from the store."""
        vindex = self._vectors
        if vindex.base_saved and not sg.follow(vindex, self.directory, self.store.manifest(), self.params):
            try:
                self._vectors = self._read_vectors()[0]
            except IndexCorrupt:  # (as damaged as when it was loaded: catch up from the store)
                pass
        if self.store.generation() < self._vectors.generation:  # files newer than the store: load again
            self._vectors = self._load_vectors()
        elif self.store.generation() != self._vectors.generation:
            self._catch_up(self._vectors)

    def _read_vectors(self, verify: bool | None = None) -> tuple[sg.SegmentedIndex, list[str]]:
        """The base and the segments the manifest lists, as far as they chain; (index, problems)."""
        vindex, problems = sg.load_chain(self.directory, self.store.manifest(), params=self.params, verify=verify)
        if vindex.dim != self.dim:
            raise IndexCorrupt(f"{vx.FILE_NAME} holds {vindex.dim}-d vectors, the store {self.dim}-d")
        return vindex, problems

    def _load_vectors(self) -> sg.SegmentedIndex:
        try:
            vindex, problems = self._read_vectors()
        except IndexCorrupt as e:
            self.recovered = f"rebuilt the vector index from the store ({e})"
            vindex = sg.SegmentedIndex(self._build_vectors())
        else:
            generation = self.store.generation()
            if vindex.generation > generation:
                self.recovered = (f"rebuilt the vector index: it claims generation {vindex.generation}, "
                                  f"newer than the store's {generation}")
                vindex = sg.SegmentedIndex(self._build_vectors())
            elif vindex.generation < generation:
                self.recovered = f"caught the vector index up from generation {vindex.generation} to {generation}"
                if problems:
                    self.recovered += f" ({'; '.join(problems)})"
                self._catch_up(vindex)
        if self.recovered and self.store.read_only:  # the repair holds in memory only
            self.recovered += "; not saved: the index is read-only for this process"
        elif self.recovered:  # persist the repair so the next open is fast; skipped while a writer is busy
            held = self._lock.held
            if held or self._lock.try_acquire():
                try:
                    if self.store.generation() != vindex.generation:  # a writer committed meanwhile
                        self._catch_up(vindex)
                    self._vectors = vindex
                    self._save_vectors()
                except StorageError as e:  # the repair works in memory; saving it is only a speed-up
                    self.recovered += f"; could not save the repair: {e}"
                finally:
                    if not held:
                        self._lock.release()
        return vindex

    def _catch_up(self, vindex: sg.SegmentedIndex) -> None:
        with self.store.snapshot():
            generation = self.store.generation()
            removed = self.store.deleted_since(vindex.generation)
            added = list(self.store.iter_vectors(self.dim, since_generation=vindex.generation))
        vindex.remove(removed)
        for ids, vectors in added:
            vindex.add(ids, vectors)
        vindex.generation = generation

    def _build_vectors(self, progress: Progress = _no_progress, *, tune: bool = False) -> vx.VectorIndex:
        """Build the vector index from the store. With `tune` (writers only) and a recall target,
        an approximate index is built without a held-out sample, tuned on it, then completed;
        what was measured waits in `self._tuned` for `_record_tuning`. An index with a target
        that has not been tuned for it is built exact (Flat) when it cannot be tuned now: its
        first approximate build is the tuning one (see indexer/tuning.py)."""
        self._tuned = None
        with self.store.snapshot():
            generation = self.store.generation()
            n = self.store.count()
            target = self.manifest.get("target_recall") if tune else None
            factory = vx.planned_factory(self.index_type, n, self.dim)
            spec = self.index_type
            held = np.zeros(0, dtype=np.int64)
            probes = None
            if target is not None and factory != "Flat" and tuning.holdout_size(n):
                ids = self.store.ids()
                rng = np.random.default_rng(generation)
                held = np.sort(rng.choice(ids, size=tuning.holdout_size(n), replace=False))
                held_vectors = self.store.vectors(held, self.dim)
                exact = vx.ExactTopK(held_vectors, tuning.K)
                pairs = tuning.probe_pairs(ids, generation + 1)
                probes = vx.ExactTopK(self._probe_vectors(pairs), tuning.K)
            elif tuning.untuned(self.manifest, factory):
                spec = "flat"

            def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                for ids, vectors in self.store.read_ahead(lambda: self.store.iter_vectors(self.dim), generation):
                    if len(held):
                        probes.add(vectors, ids)
                        keep = ~np.isin(ids, held)
                        ids, vectors = ids[keep], vectors[keep]
                        exact.add(vectors, ids)
                    yield ids, vectors

            progress("index", 0, n)
            vindex = vx.VectorIndex.build(spec, self.dim, n, blocks, params=self.params,
                                          sample=lambda count: self._training_sample(count, held),
                                          progress=lambda m: progress("index", m, n))
            if len(held):
                progress("tune", 0, None)
                self._tuned = tuning.tune(vindex, held_vectors, exact.ids, target, self.rerank)
                self._tuned.update(count=n, generation=generation, factory=vindex.factory,
                                   at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                vindex.add(held, held_vectors)
                progress("index", len(held), n)
                if tuning.check_param(vindex) is not None:  # the probes' recall now: the goal of later checks
                    value = tuning.probe_recall(vindex, probes.queries, probes.ids)
                    self._tuned["probe"] = {"pairs": pairs.tolist(), "recall": round(value, 4), "count": n}
        vindex.generation = generation
        return vindex

    def _probe_vectors(self, pairs: np.ndarray) -> np.ndarray:
        flat = self.store.vectors(pairs.reshape(-1), self.dim).reshape(len(pairs), 2, self.dim)
        return tuning.probe_queries(flat[:, 0], flat[:, 1])

    def _check_tuning(self, progress: Progress = _no_progress) -> None:
        """Measure the probes of the last tuning on the grown index (no rebuild) and raise its
        search parameter until they reach their recall at tuning again; the new record waits
        in `self._tuned` for `_record_tuning` (see indexer/tuning.py)."""
        started = time.perf_counter()
        vindex = self._vectors
        record = dict(self.manifest["tuning"])
        probe = dict(record["probe"])
        progress("check", 0, None)
        with self.store.snapshot():
            n = self.store.count()
            pairs = np.asarray(probe["pairs"], dtype=np.int64).reshape(-1, 2)
            pairs = pairs[np.isin(pairs, self.store.ids()).all(axis=1)]  # both items still stored
            if tuning.check_param(vindex) is None or len(pairs) == 0:
                probe["count"] = n  # nothing to measure here: the next full re-tune makes new probes
            else:
                truth = vx.ExactTopK(self._probe_vectors(pairs), tuning.K)
                for ids, vectors in self.store.iter_vectors(self.dim):
                    truth.add(vectors, ids)
                done = tuning.check(vindex, truth.queries, truth.ids, probe["recall"])
                record["params"] = {**record["params"], done["param"]: done["after"]}
                probe["count"] = n
                probe["last"] = {"count": n, **{k: v for k, v in done.items() if k != "tried"},
                                 "seconds": round(time.perf_counter() - started, 2)}  # the brute force included
        record["probe"] = probe
        self._tuned = record

    def _training_sample(self, count: int, held: np.ndarray | None = None) -> np.ndarray:
        """The vectors an index type that trains is trained on: `count` items drawn at random
        (seed 0) from those not `held` out, in id order; in the caller's store snapshot."""
        ids = self.store.ids()
        if held is not None and len(held):
            ids = np.setdiff1d(ids, held, assume_unique=True)
        chosen = np.sort(np.random.default_rng(0).choice(ids, size=min(count, len(ids)), replace=False))
        return self.store.vectors(chosen, self.dim)

    def rebuild_in_parts(self, *, address: str | None = None, inflight: int = 4, block: int = 50_000,
                         progress: Progress = _no_progress) -> dict:
        """Rebuild the vector index of an IVF or IVF-PQ index on Ray (the `[ray]` extra; see
        indexer/distributed.py): trained once here on the sample a local build draws, filled
        `block` vectors at a time by Ray tasks, merged here; the result is the index a local rebuild makes
        (the same inverted lists). It is installed (`install_vectors`) and saved. Returns
        {factory, count, blocks}. The store is not repaired first (`rebuild` does that)."""
        from .distributed import build_in_parts

        self.store.require_writable("rebuilding")
        with self._writer():
            self.manifest = self.store.manifest()
            with self.store.snapshot():
                generation, n = self.store.generation(), self.store.count()
                vindex = vx.VectorIndex.trained(self.index_type, self.dim, n, params=self.params,
                                                sample=self._training_sample)
                if not vindex.factory.startswith("IVF"):
                    raise LatentError(
                        f"{self.directory} builds as {vindex.factory} for {n:,} items; only IVF types build in parts "
                        f"(create the index with --index ivf or ivfpq): rebuild it without --ray")
                blocks = [0]

                def counted() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                    for part in self.store.iter_vectors(self.dim, block=block):
                        blocks[0] += 1
                        yield part

                progress("index", 0, n)
                build_in_parts(vindex, counted, address=address, inflight=inflight,
                               progress=lambda m: progress("index", m, n))
            vindex.generation = generation
            self._install(vindex)
        return {"factory": vindex.factory, "count": n, "blocks": blocks[0], "generation": generation}

    def install_vectors(self, vindex: vx.VectorIndex) -> None:
        """Make `vindex`, a vector index built elsewhere (in parts, on other machines), this
        index's vector index, and save it. Its generation must be one the store has had: it is
        caught up with the writes made since; then its ids must be exactly the store's items
        (LatentError otherwise, and nothing changes)."""
        self.store.require_writable("installing a vector index")
        with self._writer():
            self._install(vindex)

    def _install(self, vindex: vx.VectorIndex) -> None:
        if vindex.dim != self.dim:
            raise EncoderMismatch(f"a vector index of {vindex.dim}-d vectors does not fit {self.directory} "
                                  f"({self.dim}-d)")
        with self.store.snapshot():
            generation = self.store.generation()
            if vindex.generation > generation:
                raise LatentError(f"the vector index reflects generation {vindex.generation}, newer than the "
                                  f"store's {generation} of {self.directory}: it was built from another index")
            if vindex.generation < generation:
                self._catch_up(vindex)
            live, held = self.store.ids(), vindex.ids()
        if not np.array_equal(live, held):
            missing, extra = np.setdiff1d(live, held), np.setdiff1d(held, live)
            raise LatentError(f"the vector index does not hold the items of {self.directory}: {len(missing)} missing, "
                              f"{len(extra)} unknown ids{', some twice' if len(held) != len(np.unique(held)) else ''}; "
                              "it is not installed")
        self._replace_vectors(sg.SegmentedIndex(vindex))  # the new base, written by the save
        self._save_vectors()

    def _record_tuning(self) -> None:
        """Store the parameters and figures of the tuning done by the last build, if any."""
        if self._tuned is not None:
            params = {**self.params, **self._tuned["params"]}
            self.store.set_manifest(search_params=params, tuning=self._tuned)
            self.manifest = self.store.manifest()
            self._tuned = None

    def rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of approximate candidates (rows of item ids, -1 for none) from the stored
        vectors: the best k of each row, best first, padded with -1."""
        ids = np.asarray(ids, dtype=np.int64)
        valid = np.unique(ids[ids >= 0])
        if len(valid) == 0:
            return vx.exact_topk(queries, np.zeros((0, self.dim), np.float32), k)
        vectors = self.store.vectors(valid, self.dim)
        ordered = np.sort(ids, axis=1)
        repeated = np.flatnonzero(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1))
        if len(repeated):  # an id twice in a row (never from FAISS itself): keep the first
            ids = ids.copy()
            for r in repeated:
                _, first = np.unique(ids[r], return_index=True)
                ids[r, np.setdiff1d(np.arange(ids.shape[1]), first)] = -1
        rows = max(1, (1 << 24) // max(ids.shape[1] * self.dim, 1))  # about 64 MiB of gathered vectors at once
        parts = []
        for start in range(0, len(queries), rows):
            block = ids[start:start + rows]
            gathered = vectors[np.searchsorted(valid, np.where(block >= 0, block, valid[0]))]
            parts.append(vx.exact_topk(queries[start:start + rows], gathered, k, ids=block))
        return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])

    def skipped(self, *, limit: int = 1000, source: str | None = None) -> tuple[list[dict], int]:
        """(the latest `limit` recorded skips {source, line, reason, at}, how many are recorded),
        of one source only if given."""
        return self.store.skipped(limit, source), self.store.skipped_count(source)

    def clear_skipped(self, *, source: str | None = None) -> int:
        """Forget the recorded skips (of one source only, if given); returns how many were dropped."""
        self.store.require_writable("clearing skips")
        with self._writer():
            return self.store.clear_skipped(source)

    def index_field(self, field: str, *, drop: bool = False) -> bool:
        """Make (or with `drop`, remove) an SQLite expression index on metadata field `field`, so
        that filters on it (=, in, <-style comparisons not under `not`) read the index instead of
        scanning every item; True when something changed. An index costs space and time on each
        write: make one for the fields that filters use often and that single out few items."""
        self.store.require_writable("indexing a field")
        with self._writer():
            return self.store.drop_field_index(field) if drop else self.store.index_field(field)

    def indexed_fields(self) -> list[str]:
        """The metadata fields with an index (see index_field)."""
        return self.store.indexed_fields()

    def relink_encoder(self, name: str) -> None:
        """Record the index's encoder under a new name (a model file that moved): refused unless
        the encoder of that name is the same model (the same version, which holds a hash of its
        weights, and the same dimension), so the stored vectors stay its vectors."""
        encoder = get_encoder(name)
        self.store.require_writable("relinking the encoder")
        with self._writer():
            self.manifest = self.store.manifest()
            if (encoder.version, encoder.dim) != (self.manifest.get("encoder_version"), self.dim):
                raise EncoderMismatch(
                    f"{encoder.name!r} is not the model {self.directory} was built with: it is "
                    f"{encoder.version!r} ({encoder.dim}-d), the index holds vectors of "
                    f"{self.manifest.get('encoder_version')!r} ({self.dim}-d)")
            self.store.set_manifest(encoder=encoder.name)
            self.manifest = self.store.manifest()
            self._encoder = encoder

    def tune(self, target_recall: float | None = None, *, progress: Progress = _no_progress) -> dict:
        """Tune the search parameters to `target_recall` (default: the index's stored target) on
        held-out items, rebuilding the vector index; the target is kept for later re-tuning.
        Returns what was measured (see indexer/tuning.py)."""
        self.store.require_writable("tuning")
        with self._writer():
            self.manifest = self.store.manifest()
            target = target_recall if target_recall is not None else self.manifest.get("target_recall")
            if target is None:
                raise InputError(f"{self.directory} has no recall target; give a target recall, such as 0.95")
            target = tuning.check_target(target)
            if target != self.manifest.get("target_recall"):
                self.store.set_manifest(target_recall=target)
                self.manifest = self.store.manifest()
            n = self.store.count()
            factory = vx.planned_factory(self.index_type, n, self.dim)
            if factory == "Flat" or not tuning.holdout_size(n):
                exact = factory == "Flat"
                record = {"target_recall": target, "recall": 1.0 if exact else None, "reached": exact,
                          "count": n, "factory": factory, "params": {},
                          "note": "exact search: nothing to tune" if exact else
                                  f"fewer than {tuning.MIN_ITEMS:,} items: tuned once there are more"}
                self.store.set_manifest(tuning=record)
                self.manifest = self.store.manifest()
                return record
            self._replace_vectors(self._build_vectors(progress, tune=True))
            record = self._tuned
            self._save_vectors()
            self._record_tuning()
        return record

    def _replace_vectors(self, vindex: vx.VectorIndex | sg.SegmentedIndex) -> None:
        """Swap in a vector index built from the store (a new base, not yet saved)."""
        if isinstance(vindex, vx.VectorIndex):
            vindex = sg.SegmentedIndex(vindex)
        with self._guard.exclusive():
            self._vectors = vindex

    def _apply(self, generation: int, removed: Sequence[int], ids: np.ndarray | None = None,
               vectors: np.ndarray | None = None) -> None:
        """Bring the vector index to `generation`, the write just committed: remove `removed`,
        add `ids`. The caller holds the exclusive lock from before the commit, so no reader
        sees the store and the vector index at different generations."""
        vindex = self._vectors
        vindex.remove(np.asarray(removed, dtype=np.int64))
        if ids is not None:
            vindex.add(ids, vectors)
        vindex.generation = generation

    def _save_vectors(self, progress: Progress = _no_progress) -> None:
        """Write what is only in memory: a new base, then the open segment (the writes since the
        last file); merge segments of similar size; record the live files in the manifest and
        delete the files it no longer lists. Never rewrites a base that is on disk."""
        vindex = self._vectors
        try:
            with self._guard.shared():  # searches may run meanwhile, changes may not
                if not vindex.base_saved:
                    self._write_base(vindex, vindex.base)
                if vindex.generation != vindex.saved_generation or (
                        vindex.segments and vindex.segments[-1].name is None):
                    tail = vindex._tail()
                    tail.generation = vindex.generation
                    self._write_segment(vindex, tail)
            while (run := vindex.tier_run()) is not None:
                merged = vindex.merged_tier(*run)
                with self._guard.shared():
                    self._write_segment(vindex, merged, replacing=run)
                with self._guard.exclusive():
                    vindex.replace_run(*run, merged)
        except OSError as e:
            raise StorageError(
                f"could not write the vector index files in {self.directory} ({e.strerror or e}); the files "
                "written before are left as they were and everything committed to latent.db is kept: the vector "
                "index is brought up to date from latent.db when the index is next opened, or by "
                "`latent rebuild` once there is room") from e
        sg.remove_unlisted(self.directory, self.store.manifest())

    def _record_files(self, vindex: sg.SegmentedIndex, segments: list[sg.Segment], generation: int,
                      **more) -> None:
        self.store.set_manifest(vectors_generation=generation, vectors_factory=vindex.factory,
                                vectors_segments=[s.entry() for s in segments], **more)

    def _write_base(self, vindex: sg.SegmentedIndex, base: vx.VectorIndex) -> None:
        """Write `base` as vectors.faiss; the manifest then lists no segments (the base holds them)."""

        def record(crc: int) -> None:  # inside the save: if this fails, the previous file is put back
            failpoints.hit("merge-renamed")
            self._record_files(vindex, [], base.generation, vectors_crc32=crc)
            vindex.base_crc = crc

        base.save(self.directory, base.generation, on_saved=record, tombstones=vindex.base_tombstones)
        vindex.base_saved = True

    def _write_segment(self, vindex: sg.SegmentedIndex, segment: sg.Segment,
                       replacing: tuple[int, int] | None = None) -> None:
        name = sg.segment_name(segment.since, segment.generation)
        kept = [s for s in vindex.segments if s.name is not None]
        if replacing is not None:
            listed = kept[:replacing[0]] + [segment] + kept[replacing[1] + 1:]
        else:
            listed = kept + [segment]

        def record(crc: int) -> None:
            segment.name, segment.crc = name, crc
            self._record_files(vindex, listed, listed[-1].generation)

        try:
            segment.vindex.save(self.directory, segment.generation, on_saved=record, name=name,
                                since=segment.since, tombstones=segment.removed)
        except BaseException:
            segment.name = segment.crc = None
            raise

    def _merge_vectors(self, progress: Progress = _no_progress, *, rebuild: bool = False) -> dict:
        """Merge the segments into a new base (see indexer/segments.py): the base is built again from
        the store when its index type changes, is due for tuning, or `rebuild`; otherwise the segments'
        vectors are added to a copy of it. Crash-safe: the old base and segments stay listed until the
        new base is durable. Under the write lock."""
        vindex = self._vectors
        n = self.store.count()
        before = {"segments": len(vindex.segments), "segment_items": vindex.segment_items,
                  "factory": vindex.factory}
        failpoints.hit("merge-start")
        if rebuild or vindex.wants_rebuild(self.index_type, n) or tuning.wants_retune(self.manifest, n) \
                or not vindex.base_saved:
            how = "rebuilt"  # from the store, at the writer's generation (it holds the lock)
            merged = sg.SegmentedIndex(self._build_vectors(progress, tune=True))
        else:
            how = "merged"
            with self._guard.shared():
                base = vindex.merged_flat_base(self.directory / vx.FILE_NAME,
                                               lambda done, total: progress("merge", done, total))
                if base is None:  # any other type: a copy of the base, the segments added to it
                    copy = vx.read_file(self.directory / vx.FILE_NAME, params=self.params, verify=False)[0]
                    base = vindex.merged_base(copy, lambda m: progress("merge", m, vindex.segment_items))
            merged = sg.SegmentedIndex(base)
        self._write_base(merged, merged.base)
        self._record_tuning()
        try:  # searched from the file, memory-mapped, rather than from the copy in memory
            mapped = vx.read_file(self.directory / vx.FILE_NAME, params=self.params, mmap=True, verify=False)[0]
            if (mapped.generation, mapped.ntotal) == (merged.generation, merged.ntotal):
                merged = sg.SegmentedIndex(mapped, base_saved=True, base_crc=merged.base_crc)
        except IndexCorrupt:
            pass
        self._replace_vectors(merged)
        failpoints.hit("merge-recorded")
        sg.remove_unlisted(self.directory, self.store.manifest())
        return {**before, "how": how, "items": merged.ntotal, "factory_after": merged.factory,
                "generation": merged.generation}

    def _maybe_merge(self, progress: Progress = _no_progress) -> bool:
        vindex = self._vectors
        n = self.store.count()
        ratio, minimum = sg.merge_policy(self.manifest)
        if vindex.merge_due(self.index_type, n, ratio, minimum) or tuning.wants_retune(self.manifest, n):
            done = self._merge_vectors(progress)
            if done["how"] == "merged" and tuning.can_check(self.manifest):
                # the segments were searched exactly until now; in the base's graph they may be
                # found less often: measure the probes on it, and raise efSearch/nprobe if needed
                # (without this, GloVe growing by 10% fell to 0.940 right after such merges)
                self._check_tuning(progress)
                self._record_tuning()
            return True
        return False

    def compact(self, *, progress: Progress = _no_progress) -> dict:
        """Merge every segment into the base now (`latent compact`); returns what was merged."""
        self.store.require_writable("compacting")
        with self._writer():
            self.manifest = self.store.manifest()
            _ = self.vectors
            with self._guard.exclusive():
                self._follow_files()
            if not self._vectors.segments and self._vectors.base_saved and not self._vectors.wants_rebuild(
                    self.index_type, self.store.count()):
                return {"segments": 0, "segment_items": 0, "how": "nothing to merge", "items": self._vectors.ntotal,
                        "factory": self._vectors.factory, "factory_after": self._vectors.factory,
                        "generation": self._vectors.generation}
            self._save_vectors()
            return self._merge_vectors(progress)

    # -- writes ---------------------------------------------------------------------------------
    @contextmanager
    def _writer(self) -> Iterator[None]:
        """The write lock, held by this thread."""
        self._begin_lock()
        try:
            yield
        finally:
            self._lock.release()

    def _begin_lock(self) -> None:
        if self._guard.sharing():  # its write would wait for its own snapshot to end
            raise self._write_in_snapshot()
        self._lock.acquire()

    def _begin_write(self) -> None:
        self.store.require_writable("writing")  # before the lock: a read-only directory has no write.lock to take
        self._begin_lock()
        self._pending_skips = []  # (a write the disk failed leaves its skips unrecorded)
        try:
            self.manifest = self.store.manifest()
            _ = self.vectors  # load and catch up under the lock
            with self._guard.exclusive():  # the files as they are now (another handle may have merged)
                self._follow_files()
        except BaseException:
            self._lock.release()
            raise

    def _end_write(self, progress: Progress = _no_progress) -> None:
        try:
            vindex = self._vectors
            if vindex is not None:
                merged = vindex.base_saved and self._maybe_merge(progress)
                if not merged and tuning.wants_check(self.manifest, self.store.count()):
                    self._check_tuning(progress)  # the grown index's recall, without a rebuild
                    self._record_tuning()
                if not merged and (vindex.generation != self.store.manifest().get("vectors_generation")
                                   or not vindex.base_saved):
                    self._save_vectors()
            self.store.checkpoint()
        finally:
            self._lock.release()

    def add(self, items: Iterable[Item | str | dict], *, keys: Sequence[str] | None = None,
            metadata: Sequence[dict] | None = None, batch_size: int | None = None, encoder: str | None = None,
            progress: Progress = _no_progress, total: int | None = None,
            on_commit: OnCommit | None = None) -> IngestReport:
        """Add or update items (upsert by key), skipping unchanged ones; Skips are reported.

        Items are texts, dicts ({"text", "key", "metadata", "kind"}) or Records (from
        `read_inputs`, for files); with `keys` and/or `metadata`, `items` are texts and these
        give each one's key and metadata. A text without a key is keyed by its content hash.

        A Record that comes with its `vector` (encoded by a Ray worker, or read from a vector
        column) is stored with it, normalised, and not encoded again; its dimension must be the
        index's (EncoderMismatch otherwise). The model is loaded only when an item needs it.

        Each batch is one store transaction, durable once `on_commit(generation, items)` is
        called; the vector index follows in memory and is saved at the end (and every
        SAVE_EVERY_S seconds on long runs). Images are read, hashed, decoded and preprocessed
        in worker threads ahead of the model. When a batch fails (a full disk), the batches
        committed before it are kept and the error says how many there were. A KeyboardInterrupt
        ends the add at once: committed batches are kept, and the vectors file catches up with
        them when the index is next opened.
        """
        if encoder is not None:
            self.check_encoder(encoder)
        items = records_from_texts(items, keys=keys, metadata=metadata) if keys is not None or metadata is not None \
            else as_items(items)
        batch_size = int(batch_size or self.encoder.default_batch_size)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if "image" in self.manifest.get("modalities", ()):  # the model loads when the first image needs it
            items = prefetch(items, lambda image: self.encoder.preprocess(image), ahead=2 * batch_size)
        report = IngestReport()
        try:
            with self._writing(report, progress), SeenKeys() as seen:
                self._add_items(items, report, batch_size, progress, total, on_commit, seen)
        except StorageError as e:
            if not report.committed:
                raise
            raise StorageError(f"{e} (this run committed {len(report.committed)} batches, "
                               f"{sum(n for _, n in report.committed)} items, before the failure; "
                               "they are kept)") from e
        return report

    def _add_items(self, items: Iterable[Item], report: IngestReport, batch_size: int, progress: Progress,
                   total: int | None, on_commit: OnCommit | None, seen: SeenKeys) -> None:
        last_save = time.monotonic()
        save_every = env_seconds("LATENT_SAVE_EVERY_S", 60.0) if SAVE_EVERY_S is None else SAVE_EVERY_S
        progress("add", 0, total)
        batch: list[Record] = []

        def flush() -> None:
            before = len(report.committed)
            self._add_batch(batch, report, seen)
            if on_commit is not None and len(report.committed) > before:
                on_commit(*report.committed[-1])
            progress("add", len(batch), total)

        for item in items:
            if isinstance(item, Skip):
                self._skip(report, item)
                progress("add", 1, total)
                continue
            self._check_modality(item)
            if item.kind != "image" and item.vector is None and (not item.text or not item.text.strip()):
                self._skip(report, Skip(item.source, item.line, "empty text"))
                progress("add", 1, total)
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
                batch = []
                if time.monotonic() - last_save > save_every:
                    self._save_vectors()
                    self._maybe_merge(progress)
                    self.store.checkpoint()
                    last_save = time.monotonic()
        if batch:
            flush()

    @contextmanager
    def _writing(self, report: IngestReport | None = None, progress: Progress = _no_progress) -> Iterator[None]:
        """Hold the write lock around a write; afterwards record skips and save the vector index.
        When the disk failed, nothing more is written; after another failure, what was done is
        finished if possible, and a second failure then never hides the first."""
        self._begin_write()
        try:
            yield
        except (StorageError, OSError):  # the disk failed: write nothing more (the next open repairs)
            self._lock.release()
            raise
        except KeyboardInterrupt:  # be prompt: no rebuild, no tuning, no save (see _interrupted)
            self._interrupted()
            raise
        except BaseException:  # a bad input: keep what was done, save it if possible
            try:
                self._finish_write(report, progress)
            except (StorageError, OSError):
                pass
            raise
        self._finish_write(report, progress)

    def _interrupted(self) -> None:
        """After Ctrl-C: what is committed stays, and the skips counted are recorded (one small
        transaction). The vector index is neither rebuilt, tuned nor saved (saving a large one
        takes minutes): the interrupt may have left it half-updated in memory, so it is dropped,
        and the vectors file, derived from the store, catches up when the index is next opened."""
        self._vectors = None
        try:
            self._record_skips()
        except (StorageError, OSError):
            pass
        finally:
            self._lock.release()

    def _finish_write(self, report: IngestReport | None, progress: Progress) -> None:
        try:
            self._record_skips()
        finally:
            self._end_write(progress)

    def _skip(self, report: IngestReport, skip: Skip) -> None:
        """Count a skip in the report and record it in the store (every SKIP_CHUNK skips, and at the end)."""
        report.skips.add(skip)
        self._pending_skips.append((skip.source, skip.line, skip.reason))
        if len(self._pending_skips) >= SKIP_CHUNK:
            self._record_skips()

    def _record_skips(self) -> None:
        pending, self._pending_skips = self._pending_skips, []
        if pending:
            self.store.record_skips(pending)

    def _check_modality(self, record: Record) -> None:
        if record.vector is not None:  # encoded elsewhere: the dimension is checked when it is stored
            return
        modality = "image" if record.kind == "image" else ("word" if record.kind == "word" else "text")
        modalities = self.encoder.modalities
        if modality in modalities or (modality != "image" and {"text", "word"} & set(modalities)):
            return
        raise EncoderMismatch(
            f"{self.directory} uses encoder {self.encoder_name!r}, which cannot encode {modality}s "
            f"({record.source or record.key}); create an index with one of: "
            f"{IMAGE_ENCODERS if modality == 'image' else TEXT_ENCODERS}"
        )

    def _resolve(self, rec: Record, report: IngestReport) -> tuple[str, dict, np.ndarray | None] | None:
        """(content hash, metadata, preprocessed image or None) of a record; None when it is skipped."""
        if rec.kind != "image":
            if not _is_unicode(rec.text):
                self._skip(report, Skip(rec.source, rec.line, "the text is not valid Unicode (it holds a lone "
                                           f"surrogate): {_shown(rec.text)}"))
                return None
            return rec.content_hash or content_hash(rec.text), rec.metadata, None
        if rec.vector is not None:  # encoded elsewhere, which read and hashed the file
            return rec.content_hash, rec.metadata, None
        try:
            prepared = rec.prepared.result() if rec.prepared is not None else \
                prepare(rec, self.encoder.preprocess)
        except ImageRefused as e:
            self._skip(report, Skip(rec.source, rec.line, str(e)))
            return None
        return prepared.sha256, {**prepared.metadata, **rec.metadata}, prepared.array

    def _add_batch(self, batch: list[Record], report: IngestReport, seen: SeenKeys) -> None:
        by_key: dict[str, tuple[Record, str, str, np.ndarray | None]] = {}
        for rec in batch:  # the first row of a key in one input is stored, a later one is reported
            resolved = self._resolve(rec, report)
            if resolved is None:
                continue
            rec_hash, metadata, array = resolved
            try:
                meta = metadata_json(metadata)
            except InputError as e:
                self._skip(report, Skip(rec.source, rec.line, str(e)))
                continue
            key = rec.key if rec.key is not None else rec_hash[:20]
            if not key or "\0" in key or not _is_unicode(key):
                self._skip(report, Skip(rec.source, rec.line, "the key is empty, contains a NUL character or is "
                                           f"not valid Unicode: {_shown(key)}"))
                continue
            if key in by_key:
                self._skip(report, Skip(rec.source, rec.line, _duplicate(rec, key, by_key[key][0])))
                continue
            by_key[key] = (rec, rec_hash, meta, array)
        for key, (source, line) in seen.earlier(list(by_key)).items():  # an earlier batch of this input had it
            rec = by_key.pop(key)[0]
            self._skip(report, Skip(rec.source, rec.line, _duplicate(rec, key, Record("", source=source, line=line))))
        self._skip_duplicate_images(by_key, report)
        existing = self.store.lookup(list(by_key))
        to_encode: list[tuple[str, Record, np.ndarray | None]] = []
        meta_updates: list[tuple[int, str]] = []
        for key, (rec, rec_hash, meta, array) in by_key.items():
            if key in existing and existing[key][1] == rec_hash:
                old = existing[key][2]
                if rec.kind == "image":  # keep what the encoder added (labels) to the stored metadata
                    meta = metadata_json({**json.loads(old), **json.loads(meta)})
                if old != meta:
                    meta_updates.append((existing[key][0], meta))
                else:
                    report.unchanged += 1
                continue
            to_encode.append((key, rec, array))
        offered = [key for key, _, _ in to_encode]
        vectors, extra = self._encode_records(to_encode, report)
        finite = np.isfinite(vectors).all(axis=1)
        zero = ~finite | ~vectors.any(axis=1)
        if zero.any():  # no direction to search by: such an item could never be found
            for (_, rec, _), ok in [(t, f) for t, z, f in zip(to_encode, zero, finite) if z]:
                given = "it came with" if rec.vector is not None else "the encoder gave it"
                self._skip(report, Skip(rec.source, rec.line, f"{given} a zero vector" if ok else
                                        f"{given} a vector holding NaN or infinite values"))
            to_encode[:] = [t for t, z in zip(to_encode, zero) if not z]
            extra = [e for e, z in zip(extra, zero) if not z]
            vectors = vectors[~zero]
        dropped = set(offered) - {key for key, _, _ in to_encode}  # the encoder refused them: not stored
        seen.add([(key, by_key[key][0].source, by_key[key][0].line) for key in by_key if key not in dropped])
        if not to_encode and not meta_updates:
            return
        replace_ids = [existing[key][0] for key, _, _ in to_encode if key in existing]
        rows = [{"key": key, "kind": rec.kind, "text": (rec.text or None) if rec.kind != "image" else None,
                 "path": getattr(rec, "path", None) or None, "content_hash": by_key[key][1],
                 "metadata": metadata_json({**json.loads(by_key[key][2]), **more}) if more else by_key[key][2],
                 "vector": vec}
                for (key, rec, _), vec, more in zip(to_encode, vectors, extra)]
        with self._guard.exclusive():
            generation, ids = self.store.write_batch(rows, replace_ids=replace_ids, metadata_updates=meta_updates)
            self._apply(generation, replace_ids, ids, vectors)
        report.added += len(rows) - len(replace_ids)
        report.replaced += len(replace_ids)
        report.metadata_updated += len(meta_updates)
        report.committed.append((generation, len(rows) + len(meta_updates)))

    def _skip_duplicate_images(self, by_key: dict, report: IngestReport) -> None:
        """Same image content under a second key is stored once: the second becomes a Skip."""
        hashes = [h for rec, h, _, _ in by_key.values() if rec.kind == "image"]
        if not hashes:
            return
        owners = self.store.keys_of_hashes(hashes)
        for key, (rec, rec_hash, _, _) in list(by_key.items()):
            if rec.kind != "image":
                continue
            owner = owners.setdefault(rec_hash, key)
            if owner != key:
                self._skip(report, Skip(rec.source, rec.line, f"same content as {owner!r}, stored once"))
                del by_key[key]

    def _encode_records(self, to_encode: list[tuple[str, Record, np.ndarray | None]],
                        report: IngestReport) -> tuple[np.ndarray, list[dict]]:
        """Vectors (and encoder metadata) for records in order; texts the encoder refuses
        (unknown words) become Skips and leave `to_encode`. Records that come with their vector
        keep it (normalised); EncoderMismatch when its dimension is not the index's."""

        def texts() -> list[str]:
            return [rec.text for _, rec, array in to_encode if array is None and rec.vector is None]

        try:
            text_vectors = self.encoder.encode(texts()) if texts() else None
        except OutOfVocabulary as e:
            bad = set(e.words)
            for _, rec, _ in [t for t in to_encode if t[2] is None and t[1].vector is None and t[1].text in bad]:
                self._skip(report, Skip(rec.source, rec.line,
                                           f"{rec.text!r} is not in the {self.encoder_name} vocabulary"))
            to_encode[:] = [t for t in to_encode if t[2] is not None or t[1].vector is not None or t[1].text not in bad]
            text_vectors = self.encoder.encode(texts())
        arrays = [array for _, _, array in to_encode if array is not None]
        image_vectors, image_meta = self.encoder.encode_preprocessed(np.stack(arrays)) if arrays else (None, [])
        vectors = np.zeros((len(to_encode), self.dim), dtype=np.float32)
        extra: list[dict] = [{} for _ in to_encode]
        t = i = 0
        for row, (_, rec, array) in enumerate(to_encode):
            if rec.vector is not None:
                given = np.asarray(rec.vector, dtype=np.float32)
                if given.shape != (self.dim,):
                    raise EncoderMismatch(
                        f"{rec.source}{f':{rec.line}' if rec.line else ''}: a vector of shape {given.shape} does not "
                        f"fit {self.directory}, which holds {self.dim}-d vectors of {self.encoder_name!r}")
                vectors[row] = normalize(given[None, :])[0] if np.isfinite(given).all() else given
            elif array is None:
                vectors[row] = text_vectors[t]
                t += 1
            else:
                vectors[row], extra[row] = image_vectors[i], image_meta[i]
                i += 1
        return vectors, extra

    def add_vectors(self, keys: Sequence[str], vectors: np.ndarray, *, metadata: Sequence[dict] | None = None,
                    texts: Sequence[str | None] | None = None) -> IngestReport:
        """Add precomputed vectors (normalised here) under keys; an existing key is replaced."""
        keys = list(keys)
        vectors = normalize(self.check_vectors(vectors))
        if len(keys) != len(vectors):
            raise InputError(f"{len(keys)} keys for {len(vectors)} vectors")
        bad = [k for k in keys if not isinstance(k, str) or not k or "\0" in k]
        if bad:
            raise InputError(f"keys must be non-empty strings without NUL characters, got {bad[0]!r}")
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            twice = next(k for k in keys if k in seen or seen.add(k))
            raise InputError(f"key {twice!r} is given twice; each key names one item")
        zero = np.flatnonzero(~vectors.any(axis=1))
        if len(zero):
            raise InputError(f"the vector of {keys[zero[0]]!r} is all zeros: it has no direction to search by")
        metadata = list(metadata) if metadata is not None else [{} for _ in keys]
        texts = list(texts) if texts is not None else [None] * len(keys)
        if len(metadata) != len(keys) or len(texts) != len(keys):
            raise InputError(f"{len(keys)} keys, {len(metadata)} metadata and {len(texts)} texts: give one each")
        report = IngestReport()
        with self._writing():
            existing = self.store.lookup(list(keys))
            rows = [{"key": k, "kind": "vector", "text": t, "path": None,
                     "content_hash": content_hash(v.tobytes().hex()),
                     "metadata": metadata_json(m), "vector": v}
                    for k, v, m, t in zip(keys, vectors, metadata, texts)]
            replace_ids = [existing[k][0] for k in keys if k in existing]
            with self._guard.exclusive():
                generation, ids = self.store.write_batch(rows, replace_ids=replace_ids)
                self._apply(generation, replace_ids, ids, vectors)
            report.added, report.replaced = len(rows) - len(replace_ids), len(replace_ids)
            report.committed.append((generation, len(rows)))
        return report

    def update_metadata(self, changes: dict[int, dict], *, manifest: dict | None = None) -> int:
        """Merge `changes[id]` (field: value) into the stored metadata of each item, in one
        transaction that bumps the generation (vectors untouched), then record `manifest` entries,
        under the same write lock. Returns how many items changed; ids no longer stored are
        passed over."""
        with self._writing():
            stored = self.store.fetch(list(changes))
            updates = []
            for i, fields in changes.items():
                if i in stored:
                    before = stored[i]["metadata"] if isinstance(stored[i]["metadata"], dict) else {}
                    after = {**before, **fields}
                    if after != before:
                        updates.append((i, metadata_json(after)))
            if updates:
                with self._guard.exclusive():
                    generation, _ = self.store.write_batch([], metadata_updates=updates)
                    self._apply(generation, [])
            if manifest:
                self.store.set_manifest(**manifest)
                self.manifest = self.store.manifest()
        return len(updates)

    def delete(self, keys: Sequence[str]) -> tuple[int, list[str]]:
        """Delete items by key. Returns (number deleted, keys that were not in the index)."""
        ids = None
        try:
            with self._writing():
                with self._guard.exclusive():
                    generation, ids, missing = self.store.delete_keys(list(keys))
                    self._apply(generation, ids)
        except StorageError as e:
            if ids is None:
                raise
            raise StorageError(f"{e} (the deletion of {len(ids)} items was committed before the failure; "
                               "it is kept)") from e
        return len(ids), missing

    def rebuild(self, *, progress: Progress = _no_progress) -> list[str]:
        """Repair what the store can repair and rebuild the vector index from it; save it.

        Damaged rows are repaired first: a damaged or non-finite vector is re-encoded from the
        item's text (IndexCorrupt names the items that have none, for `latent delete`),
        unreadable metadata is kept as text under `_damaged_metadata`, and a row from a
        generation the store does not know is moved to the current one. Returns what was repaired.
        """
        self.store.require_writable("rebuilding")
        with self._writer():
            self.manifest = self.store.manifest()
            with self._guard.exclusive():  # repairs keep the generation: no search may read rows meanwhile
                repaired = self._repair_rows()
            self._replace_vectors(self._build_vectors(progress, tune=True))
            self._save_vectors()
            self._record_tuning()
        return repaired

    def _repair_rows(self) -> list[str]:
        repaired: list[str] = []
        damaged = self.store.damaged_rows(self.dim)  # one scan of every row; a vector repair changes no metadata
        bad = damaged["vector"]
        if bad:
            lost = [key for _, key, text in bad if not text]
            if lost:
                raise IndexCorrupt(
                    f"{len(lost)} item(s) have damaged vectors and no text to re-encode them from "
                    f"({_keys(lost)}); remove them with `latent delete {self.directory} KEY...` and add them again")
            vectors = self.encoder.encode([text for _, _, text in bad])
            self.store.set_vectors([i for i, _, _ in bad], vectors)
            repaired.append(f"re-encoded {len(bad)} damaged vector(s) from their text ({_keys([k for _, k, _ in bad])})")
        if damaged["metadata"]:
            self.store.keep_metadata_as_text([i for i, _, _ in damaged["metadata"]])
            repaired.append(f"kept the unreadable metadata of {len(damaged['metadata'])} item(s) as text under "
                            f"_damaged_metadata ({_keys([k for _, k, _ in damaged['metadata']])})")
        if damaged["generation"]:
            self.store.adopt_generation([i for i, _, _ in damaged["generation"]])
            repaired.append(f"moved {len(damaged['generation'])} item(s) from an unknown future generation to the "
                            "current one")
        counts = self.store.keyword_index_counts()
        if counts is not None and counts[0] != counts[1]:
            self.store.rebuild_keyword_index()
            repaired.append(f"rebuilt the keyword index ({counts[0]:,} texts in it, {counts[1]:,} in the store)")
        return repaired

    # -- inspection -----------------------------------------------------------------------------
    def info(self) -> dict:
        """Count, encoder, dimension, metric, index type and parameters, size on disk, generations."""
        manifest = self.store.manifest()
        try:
            header, _ = vx.read_header(self.directory / vx.FILE_NAME)
        except IndexCorrupt:
            header = {}
        size = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        return {
            "directory": str(self.directory),
            "count": self.store.count(),
            "encoder": manifest["encoder"], "encoder_version": manifest.get("encoder_version"),
            "runtime": manifest.get("runtime"), "dim": manifest["dim"], "metric": manifest.get("metric", "ip"),
            "index_type": manifest["index_type"], "faiss_factory": header.get("factory"),
            "search_params": manifest.get("search_params", {}),
            "target_recall": manifest.get("target_recall"),
            "tuning": {k: ({n: x for n, x in v.items() if n != "pairs"} if k == "probe" else v)
                       for k, v in (manifest.get("tuning") or {}).items() if k != "tried"} or None,
            "generation": manifest["generation"], "vectors_generation": manifest.get("vectors_generation"),
            "vectors_segments": len(sg.listed_files(manifest)),
            "segment_items": sum(int(e.get("ntotal") or 0) for e in sg.listed_files(manifest)),
            "size_bytes": size, "skipped_inputs": self.store.skipped_count(),
            "created": manifest.get("created"), "format_version": manifest.get("format_version"),
        }

    def check(self) -> dict:
        """Integrity report; changes nothing. `ok` is False when any problem was found.

        Problems are damage: SQLite's integrity check, damaged rows, a vectors file that is
        corrupt, newer than the store or older than the last one written, or whose ids differ
        from the store's. A vectors file that is merely behind the store (a crash before its
        save) is a note, not a problem: opening the index catches it up, as this check does
        in memory before comparing ids.
        """
        problems: list[str] = []
        notes: list[str] = []
        integrity = self.store.integrity_check()
        if integrity != ["ok"]:
            problems.append("SQLite integrity_check: " + "; ".join(integrity[:5]) +
                            " (latent.db is the source of truth: restore it from a backup)")
        # A writer may commit and save while this runs. Read in the order writes happen backwards
        # (the recorded generation, then the file, then the store), so that recorded <= file <= store
        # holds unless something is damaged, and compare ids within one snapshot of the store.
        for attempt in range(3):  # again if a writer changed the files meanwhile (a merge deletes segments)
            manifest = self.store.manifest()
            recorded = manifest.get("vectors_generation")
            file_problems: list[str] = []
            try:
                vindex, file_problems = sg.load_chain(self.directory, manifest, params=self.params, verify=True)
                load_error = None
                for entry in sg.listed_files(manifest):  # every listed file, also past a break in the chain
                    try:
                        vx.read_header(self.directory / entry["name"], with_payload=True)
                    except IndexCorrupt as e:
                        if not any(str(e) in p for p in file_problems):
                            file_problems.append(str(e))
            except IndexCorrupt as e:
                vindex, load_error = None, e
            now = self.store.manifest()
            if all(now.get(k) == manifest.get(k) for k in ("vectors_segments", "vectors_crc32")):
                break
        with self.store.snapshot():
            generation = self.store.generation()
            live = self.store.ids()
            damaged = self.store.damaged_rows(self.dim)
            file_generation = vindex.generation if vindex is not None else None
            if (vindex is not None and vindex.dim == self.dim and file_generation < generation
                    and not damaged["unreadable"]):
                self._catch_up(vindex)  # in this snapshot: to exactly `generation`
        facts = {"count": int(len(live)), "generation": generation}
        if damaged["vector"]:
            problems.append(f"{len(damaged['vector'])} item(s) have damaged, non-finite or zero vectors "
                            f"({_keys([k for _, k, _ in damaged['vector']])}); `latent rebuild` re-encodes them from "
                            "their text")
        if damaged["metadata"]:
            problems.append(f"{len(damaged['metadata'])} item(s) have metadata that is not a JSON object "
                            f"({_keys([k for _, k, _ in damaged['metadata']])}); `latent rebuild` keeps it as text")
        if damaged["generation"]:
            problems.append(f"{len(damaged['generation'])} item(s) carry a generation newer than the store's "
                            f"{generation}; `latent rebuild` repairs them")
        counts = self.store.keyword_index_counts()
        if counts is not None and counts[0] != counts[1]:
            problems.append(f"the keyword index holds {counts[0]:,} texts, the store {counts[1]:,}; "
                            "`latent rebuild` makes it again")
        for problem in file_problems:
            problems.append(f"segment file: {problem} (opening the index catches it up from the store)")
        if vindex is None:
            problems.append(f"{load_error} (opening the index also rebuilds it)")
        else:
            facts["vectors_generation"] = file_generation
            facts["vectors_segments"] = len(vindex.segments)
            if vindex.dim != self.dim:
                problems.append(f"{vx.FILE_NAME} holds {vindex.dim}-d vectors, the store {self.dim}-d; "
                                "run `latent rebuild`")
            elif file_generation > generation:
                problems.append(f"{vx.FILE_NAME} reflects generation {file_generation}, newer than the store's "
                                f"{generation}: the store lost commits (a deleted -wal file?); opening the index "
                                "rebuilds the vector index from what the store holds")
            else:
                if recorded is not None and file_generation < recorded:
                    problems.append(f"{vx.FILE_NAME} is older (generation {file_generation}) than the last one "
                                    f"written ({recorded}): it was replaced by an older copy; opening the index "
                                    "catches it up")
                elif file_generation < generation:
                    notes.append(f"{vx.FILE_NAME} is behind the store (generation {file_generation} of "
                                 f"{generation}), as after a crash before its save; opening the index catches it "
                                 "up, and this check did so in memory")
                in_faiss = vindex.ids()
                missing = np.setdiff1d(live, in_faiss)
                extra = np.setdiff1d(in_faiss, live)
                if len(missing) or len(extra):
                    problems.append(f"{vx.FILE_NAME} disagrees with the store: {len(missing)} items missing, "
                                    f"{len(extra)} unknown ids; run `latent rebuild`")
                if len(in_faiss) != len(np.unique(in_faiss)):
                    problems.append(f"{vx.FILE_NAME} holds duplicate ids; run `latent rebuild`")
        return {"ok": not problems, "problems": problems, "notes": notes,
                "sqlite_integrity": integrity[0] if integrity else "", **facts}


class _Snapshot:
    """Index.snapshot's context: the vector index shared (see ReadWriteLock) and a read
    transaction of the store at its generation. A class: it is on the path of every search."""

    __slots__ = ("index", "vectors", "lazy", "read")

    def __init__(self, index: Index, vectors: bool, lazy: bool = False):
        self.index, self.vectors, self.lazy = index, vectors, lazy
        self.read = None

    def __enter__(self) -> None:
        index = self.index
        guard = index._guard
        if guard.sharing():  # nested: the outer snapshot holds it all
            if self.vectors:
                index._loaded_in_snapshot()
            return
        while True:
            guard.acquire_shared()
            try:
                vindex = index._vectors
                if self.lazy and vindex is not None and index.store.unchanged_since(vindex.generation):
                    read = index.store.lazy_snapshot(vindex.generation)
                    read.__enter__()
                    self.read = read
                    return
                read = index.store.snapshot()
                store = read.__enter__()
            except BaseException:
                guard.release_shared()
                raise
            try:
                vindex = index._vectors
                current = not self.vectors if vindex is None else vindex.generation == store.snapshot_generation()
            except BaseException:
                self._end(read, None)
                raise
            if current:
                self.read = read
                return
            self._end(read, None)
            with guard.exclusive():  # not loaded yet, or behind (another process wrote): catch up, retry
                index._current_vectors()

    def __exit__(self, *exc) -> None:
        if self.read is not None:
            self._end(self.read, exc)

    def _end(self, read, exc) -> None:
        try:
            read.__exit__(*(exc or (None, None, None)))
        finally:
            self.index._guard.release_shared()


def _keys(keys: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(repr(k) for k in keys[:shown]) + more
