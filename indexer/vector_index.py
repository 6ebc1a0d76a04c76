"""The vector index: FAISS over item ids, derived from the store and rebuildable.

All FAISS calls of latent live here. A vector index file (the base `vectors.faiss`, and
each delta segment, see indexer/segments.py) holds the plain FAISS bytes, so that FAISS
can memory-map it, followed by removed-but-unpurged ids and a small trailer header
(generation range, factory, CRC-32); it is written to a temporary file, fsynced and moved
into place.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np

from . import failpoints
from .errors import IndexCorrupt, LatentError

FILE_NAME = "vectors.faiss"
MAGIC = b"LATENTVX"
FILE_FORMAT = 1

# Named index types. `auto` picks by the size of the vectors held (n * dim floats; the
# measurements behind each step are in benchmarks/bench_scale.py and the README):
# - up to 2**25 floats (128 MiB: about 87k items of 384-d, or all 400k GloVe 50-d words): Flat,
#   exact, and one query scans it in a few milliseconds on one core;
# - up to 2**30 floats (4 GiB: about 2.8M items of 384-d): HNSW32, sub-millisecond queries at
#   recall@10 ~0.95-0.99, about 4*dim + 300 bytes per item in memory;
# - beyond: IVF-PQ (dim/8 bytes per item, 32x smaller than Flat) re-ranked exactly from the store.
# IVF types train once enough vectors exist and search exactly until then.
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
AUTO_FLAT_MAX_FLOATS = 2**25
AUTO_HNSW_MAX_FLOATS = 2**30
DEFAULT_PARAMS = {"efConstruction": 128, "efSearch": 128, "nprobe": None, "rerank": 10}  # nprobe: default_nprobe
# Factories whose scores are exact inner products of the stored vectors; any other (PQ, SQ, RQ,
# LSH, PCA...) is re-ranked from the store's exact vectors.
_EXACT_SCORES = re.compile(r"(IDMap2?,)?(Flat|HNSW\d+(,Flat)?|IVF\d+(_HNSW\d+)?,Flat)")
_CODEBOOKS = re.compile(r"(?:PQ|RQ)\d+((?:x\d+)*)")  # nbits is the last xN (default 8)


def _nlist(n: int) -> int:
    """IVF list count: about 4*sqrt(n), a power of two, with >= 39 training points per list."""
    target = max(8, min(4 * math.sqrt(max(n, 1)), n / 39))
    return max(1, 2 ** int(round(math.log2(target))))


def default_nprobe(nlist: int) -> int:
    """IVF lists probed when no nprobe is set: 2*sqrt(nlist), at least 32 (all lists below 32).

    A fixed 32 fell as the lists grew: recall@10 0.594 on 10M 64-d (8,192 lists), 0.877 on
    GloVe 390k (2,048 lists). Measured (benchmarks/bench_build.py --parts nprobe): GloVe
    IVF2048 0.961 at 91, clustered 64-d IVF1024 0.961 at 64; the probes, and so the cost of
    a query, grow as sqrt(nlist) where a fixed share of the lists would grow as nlist."""
    return min(nlist, max(32, int(round(2 * math.sqrt(nlist)))))


def _pq_m(dim: int) -> int:
    """PQ sub-quantizers: the divisor of dim closest to dim/8 (8 dims per byte-code). Results are
    re-ranked from the exact stored vectors, so the codes only need to find candidates; and
    FAISS trains each sub-quantizer's 256 centroids in turn (about 0.3 s each on 10,000 vectors
    here), so PQ96 at 384-d took 29-36 s to train where PQ48 took 14-19 s."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / 8), -m))


PQ_TRAIN_POINTS_PER_CENTROID = 64  # PQ codebooks train on at most 64 * 256 = 16,384 vectors (FAISS: 65,536)
IVF_REGROW = 16  # a named IVF type is retrained once n has grown 16x (its list count would have grown 4x)


def target_factory(spec: str, n: int, dim: int) -> str:
    """The FAISS factory string that index type `spec` means for n vectors of `dim`."""
    if spec == "flat":
        return "Flat"
    if spec == "hnsw":
        return "HNSW32"
    if spec == "ivf":
        return f"IVF{_nlist(n)},Flat"
    if spec == "ivfpq":
        return f"IVF{_nlist(n)},PQ{_pq_m(dim)}"
    if spec == "auto":
        if n * dim <= AUTO_FLAT_MAX_FLOATS:
            return "Flat"
        return "HNSW32" if n * dim <= AUTO_HNSW_MAX_FLOATS else target_factory("ivfpq", n, dim)
    return spec


def validate_spec(spec: str, dim: int) -> None:
    """Raise a clear error for an index type FAISS cannot build."""
    if spec in INDEX_TYPES:
        return
    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1][:200]
        raise LatentError(
            f"invalid index type {spec!r} ({msg}); use one of {', '.join(INDEX_TYPES)} "
            "or a FAISS factory string such as 'HNSW32' or 'IVF1024,PQ32'"
        ) from e


def planned_factory(spec: str, n: int, dim: int) -> str:
    """The factory a build of n vectors makes: the type's own, or Flat until it can be trained."""
    factory = target_factory(spec, n, dim)
    need = train_threshold(factory, dim)
    return "Flat" if need and n < need else factory


def train_threshold(factory: str, dim: int) -> int:
    """How many vectors a factory needs before it is trained (0: needs no training)."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    need = 39 * ivf.nlist if ivf is not None else 1000
    codebooks = _CODEBOOKS.search(factory)  # PQ, RQ, PRQ: 2**nbits centroids per codebook
    if codebooks:
        nbits = int(codebooks.group(1).rsplit("x", 1)[-1]) if codebooks.group(1) else 8
        need = max(need, 39 * 2**nbits)
    elif "SQ" in factory:  # SQ, LSQ
        need = max(need, 1000)
    return need


class VectorIndex:
    """A FAISS index whose ids are item ids, plus the generation of the store it reflects."""

    def __init__(self, index: faiss.Index, factory: str, dim: int, *, generation: int = 0,
                 tombstones: np.ndarray | None = None, params: dict | None = None):
        self.index = index
        self.factory = factory
        self.dim = dim
        self.generation = generation
        self.tombstones = np.zeros(0, dtype=np.int64) if tombstones is None else np.asarray(tombstones, np.int64)
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self._hnsw = _hnsw_of(index)
        self._ivf = faiss.try_extract_index_ivf(index)
        if self.params.get("nprobe") is None and self._ivf is not None:
            self.params["nprobe"] = default_nprobe(int(self._ivf.nlist))
        self._plain_params: dict[int, object] = {}  # search parameters without a selector, by k

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def new(cls, factory: str, dim: int, *, params: dict | None = None) -> "VectorIndex":
        params = {**DEFAULT_PARAMS, **(params or {})}
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        hnsw = _hnsw_of(index)
        if hnsw is not None:
            hnsw.hnsw.efConstruction = int(params["efConstruction"])
        ivf = faiss.try_extract_index_ivf(index)
        ivf = faiss.downcast_index(ivf) if ivf is not None else None
        if ivf is not None and hasattr(ivf, "pq") and hasattr(ivf.pq, "cp"):
            ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_CENTROID
        if faiss.try_extract_index_ivf(index) is None and not factory.startswith("IDMap"):
            index = faiss.IndexIDMap2(index)
        return cls(index, factory, dim, params=params)

    @classmethod
    def build(cls, spec: str, dim: int, n: int, blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
              *, params: dict | None = None, sample: Callable[[int], np.ndarray] | None = None,
              progress: Callable[[int], None] | None = None) -> "VectorIndex":
        """Build the index `spec` means for n vectors, from (ids, vectors) blocks.

        An index type that needs training is trained on `sample(count)` once n reaches its
        threshold; below it the index is exact (Flat) until then.
        """
        vindex = cls.trained(spec, dim, n, params=params, sample=sample)
        for ids, vectors in blocks():
            vindex.add(ids, vectors)
            if progress:
                progress(len(ids))
        return vindex

    @classmethod
    def trained(cls, spec: str, dim: int, n: int, *, params: dict | None = None,
                sample: Callable[[int], np.ndarray] | None = None) -> "VectorIndex":
        """The empty index `spec` means for n vectors, trained on `sample(count)` when its type
        needs training and n reaches its threshold (below it: Flat, exact)."""
        factory = planned_factory(spec, n, dim)
        need = train_threshold(factory, dim)
        vindex = cls.new(factory, dim, params=params)
        if need:
            ivf = faiss.try_extract_index_ivf(vindex.index)
            count = min(n, max(need, 64 * (ivf.nlist if ivf is not None else 256), 50_000))
            vindex.index.train(np.ascontiguousarray(sample(count), dtype=np.float32))
        return vindex

    # -- building in parts (the autofaiss recipe): empty trained copies filled apart, merged --------
    def empty_copy(self) -> bytes:
        """This index's trained, empty form, serialised: what a worker fills with its shard
        (`fill_shard`). Only IVF indexes build in parts: their inverted lists merge."""
        if self._ivf is None or self.ntotal:
            raise LatentError(f"only an empty IVF index builds in parts, not {self.factory} "
                              f"holding {self.ntotal} vectors")
        return bytes(faiss.serialize_index(self.index))

    @staticmethod
    def fill_shard(empty: bytes, ids: np.ndarray, vectors: np.ndarray) -> bytes:
        """An empty trained copy (`empty_copy`) with the vectors of one shard added, serialised."""
        index = faiss.deserialize_index(np.frombuffer(empty, dtype=np.uint8))
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        return bytes(faiss.serialize_index(index))

    def merge_shard(self, shard: bytes) -> None:
        """Append the inverted lists of a filled shard (`fill_shard` of this index's empty copy)
        to this index's, keeping its ids (FAISS merge_from). Shards merged in the order of their
        ids give the inverted lists a local build adding the same blocks in order would."""
        other = faiss.deserialize_index(np.frombuffer(shard, dtype=np.uint8))
        mine, theirs = faiss.extract_index_ivf(self.index), faiss.extract_index_ivf(other)
        mine.merge_from(theirs, 0)
        if self.index is not mine:
            self.index.ntotal = mine.ntotal

    def wants_rebuild(self, spec: str, n: int) -> bool:
        """True when the index should be rebuilt for n live items: an untrained or outgrown
        exact stage can become the real index type, or too many ids await purging."""
        if len(self.tombstones) > max(1000, 0.2 * self.ntotal):
            return True
        target = target_factory(spec, n, self.dim)
        if spec == "auto" and _family(self.factory) not in ("Flat", _family(target)):
            return True  # `auto` outgrew HNSW: IVF-PQ
        if spec in ("auto", "ivf", "ivfpq") and self._ivf is not None and _family(target) == "IVF":
            if int(re.match(r"IVF(\d+)", target).group(1)) >= IVF_REGROW ** 0.5 * self._ivf.nlist:
                return True  # trained for far fewer vectors: its lists have grown long
        if self.factory != "Flat" or target == "Flat":
            return False
        return n >= train_threshold(target, self.dim)

    # -- writes ------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise LatentError(f"vector dimension {vectors.shape[1]} does not match the index ({self.dim})")
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids; index types that cannot remove (HNSW) hide them until the next rebuild."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids) == 0:
            return
        if _hnsw_of(self.index) is not None:
            present = ids[np.isin(ids, self._raw_ids())]
            self.tombstones = np.union1d(self.tombstones, present)
            return
        self.index.remove_ids(faiss.IDSelectorBatch(ids))

    # -- reads -------------------------------------------------------------------------------
    @property
    def lossy(self) -> bool:
        """True when stored codes are compressed, so results are re-ranked from exact vectors."""
        return not _EXACT_SCORES.fullmatch(self.factory)

    @property
    def live(self) -> int:
        """How many ids a search can return (ids hidden by tombstones left out)."""
        return self.ntotal - len(self.tombstones)

    @property
    def exact(self) -> bool:
        return self.factory in ("Flat", "IDMap,Flat", "IDMap2,Flat")

    def _raw_ids(self) -> np.ndarray:
        if hasattr(self.index, "id_map"):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        ivf = faiss.try_extract_index_ivf(self.index)
        invlists = ivf.invlists
        parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                 for i in range(ivf.nlist) if invlists.list_size(i)]
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    def exact_vectors(self, ids: np.ndarray) -> np.ndarray | None:
        """The stored vectors of `ids` read from the index itself when it holds them uncompressed
        behind an id map (Flat, HNSW): 8x faster than from SQLite (16,665 of 384-d: 8 ms against
        66 ms). None when it does not, or does not hold every one of them."""
        if self.lossy or not hasattr(self.index, "id_map"):
            return None
        try:
            return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
        except RuntimeError:  # an id it does not hold
            return None

    def ids(self) -> np.ndarray:
        """The sorted item ids this index can return."""
        raw = np.sort(self._raw_ids())
        return raw[~np.isin(raw, self.tombstones)] if len(self.tombstones) else raw

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               candidates: int | None = None, thorough: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the `candidates` (default k) best ids per query; -1 pads missing.

        `allowed` restricts the search to those ids before the nearest are chosen. `thorough`
        widens an approximate search for a retry: HNSW's candidate list grows by the hidden
        (tombstoned) ids, which otherwise take its slots; IVF probes every list.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise LatentError(f"query dimension {queries.shape[-1]} does not match the index ({self.dim})")
        k = min(int(candidates or k), self.ntotal)  # FAISS pads beyond ntotal; never allocate more
        if self.ntotal == 0 or k <= 0:
            return (np.full((len(queries), max(k, 0)), -np.inf, np.float32),
                    np.full((len(queries), max(k, 0)), -1, np.int64))
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        if len(self.tombstones):
            hide = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.tombstones))
            selector = hide if selector is None else faiss.IDSelectorAnd(selector, hide)
        if selector is None and not thorough:  # the common case: parameters reused while they stay the same
            key = (k, self.params["efSearch"], self.params["nprobe"])
            params = self._plain_params.get(key)
            if params is None:
                if len(self._plain_params) > 64:
                    self._plain_params.clear()
                params = self._plain_params[key] = self._search_params(None, k)
        else:
            params = self._search_params(selector, k, thorough)
        with _threads_for(len(queries)):
            scores, ids = self.index.search(queries, k, params=params)
        ids[~np.isfinite(scores)] = -1
        return scores, ids

    def _search_params(self, selector, k: int, thorough: bool = False):
        inner, ivf = self._hnsw, self._ivf
        if inner is not None:
            ef = max(int(self.params["efSearch"]), k) + (len(self.tombstones) if thorough else 0)
            params = faiss.SearchParametersHNSW(efSearch=ef)
        elif ivf is not None:
            params = faiss.SearchParametersIVF(nprobe=ivf.nlist if thorough else int(self.params["nprobe"]))
        elif selector is None:
            return None  # some indexes (RQ, LSQ without IVF) refuse any SearchParameters
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
            params._selector = selector  # keep the Python object alive during the call
        if isinstance(self.index, faiss.IndexPreTransform):
            outer = faiss.SearchParametersPreTransform(index_params=params)
            outer._inner = params
            return outer
        return params

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory: Path, generation: int, *, on_saved: Callable[[int], None] | None = None,
             name: str = FILE_NAME, since: int = 0, tombstones: np.ndarray | None = None) -> int:
        """Write this index as the file `name` (see write_file); returns the CRC-32 recorded."""
        crc = write_file(Path(directory) / name, self.index, factory=self.factory, dim=self.dim,
                         generation=generation, since=since,
                         tombstones=self.tombstones if tombstones is None else tombstones, on_saved=on_saved)
        self.generation = int(generation)
        return crc

    @classmethod
    def load(cls, directory: Path, *, params: dict | None = None, name: str = FILE_NAME,
             mmap: bool = False, verify: bool = True) -> "VectorIndex":
        """Read a vector index file (see read_file); IndexCorrupt when it is damaged."""
        return read_file(Path(directory) / name, params=params, mmap=mmap, verify=verify)[0]


# -- the file format ------------------------------------------------------------------------------
# Format 2 (written since the segmented vector files): the plain FAISS bytes first, so FAISS can
# read or memory-map the file itself, then the removed-but-unpurged ids, then the JSON header,
# its length (u32) and MAGIC2. FAISS reads what it needs from the start and ignores the rest.
# Format 1 (read only, `vectors.faiss` of earlier versions): MAGIC, u32 length, JSON header, ids, FAISS bytes.
MAGIC2 = b"LATENTV2"
FILE_FORMAT_2 = 2
_TRAILER = 12  # u32 header length + MAGIC2
_CRC_CHUNK = 16 << 20
# Files larger than this, memory-mapped for reading, are checked by their header and exact size
# only when loaded (reading 1.8 GiB to checksum it is what memory-mapping avoids); `latent check`
# reads and checks every byte of every file. $LATENT_VERIFY_MAX_BYTES overrides it.
VERIFY_MAX_BYTES = 256 << 20


def _verify_limit() -> int:
    value = os.environ.get("LATENT_VERIFY_MAX_BYTES")
    return int(value) if value and value.isdigit() else VERIFY_MAX_BYTES


def write_file(path: Path, index: faiss.Index, *, factory: str, dim: int, generation: int, since: int = 0,
               tombstones: np.ndarray | None = None, on_saved: Callable[[int], None] | None = None) -> int:
    """Write a format-2 file atomically (temp file, fsync, rename, fsync dir); return its CRC-32.

    `on_saved(crc)` runs once the new file is durable (the store records it there). On any
    failure up to and including `on_saved` (a full disk, an I/O error), a previous file of that
    name is left byte-identical and no temporary file remains: after the rename, the previous
    file is put back from a hard link made before it. The caller holds the write lock, so
    temporary files found here are left by killed writers.
    """
    path = Path(path)
    directory, name = path.parent, path.name
    for stale in [*directory.glob(f".{name}.tmp-*"), *directory.glob(f".{name}.old-*")]:
        stale.unlink(missing_ok=True)
    tombs = np.unique(np.asarray(tombstones if tombstones is not None else [], dtype=np.int64)).astype("<i8").tobytes()
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    backup = directory / f".{name}.old-{os.getpid()}"
    try:
        faiss.write_index(index, str(tmp))  # straight to the file: no copy of the index in memory
        with open(tmp, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            fields = {"format": FILE_FORMAT_2, "generation": int(generation), "since": int(since),
                      "factory": factory, "dim": int(dim), "ntotal": int(index.ntotal),
                      "tombstones": len(tombs) // 8, "bytes": size + len(tombs)}
            crc = _checksum(fields)
            f.seek(0)
            while chunk := f.read(_CRC_CHUNK):
                crc = zlib.crc32(chunk, crc)
            crc = zlib.crc32(tombs, crc)
            header = json.dumps({**fields, "crc32": crc}).encode()
            f.seek(0, os.SEEK_END)
            f.write(tombs + header + struct.pack("<I", len(header)) + MAGIC2)
            f.flush()
            failpoints.hit("vectors-written")
            os.fsync(f.fileno())
        failpoints.hit("vectors-synced")
        try:
            os.link(path, backup)
        except OSError:  # no previous file, or a file system without hard links
            backup = None
        os.replace(tmp, path)
        try:
            failpoints.hit("vectors-renamed")
            _fsync_dir(directory)
            if on_saved is not None:
                on_saved(crc)
        except Exception:
            if backup is not None:
                os.replace(backup, path)
            raise
    finally:
        for leftover in (tmp, backup):
            if leftover is not None and os.path.lexists(leftover):
                os.unlink(leftover)
    return crc


_FLAT_HEADER = 33  # FAISS's index header: d (i32), ntotal (i64), two dummies (i64), is_trained (u8), metric (i32)
_FLAT_CHUNK = 16_384  # rows read at a time when a Flat base is merged from its file


def merge_flat_file(path: Path, drop: np.ndarray, ids: np.ndarray, vectors: np.ndarray, *,
                    params: dict | None = None, progress: Callable[[int], None] | None = None,
                    holds: tuple[int, int] | None = None) -> VectorIndex | None:
    """A Flat index holding the vectors of the Flat file at `path` (but those of the ids in
    `drop`) followed by `vectors` under `ids`, read from the file a block at a time into an
    index allocated once at its final size: the file is never held in memory beside it (a copy
    of it read whole, then grown by FAISS's add, held about 2x the base at the peak). None when
    the file is not a plain IDMap2(IndexFlatIP) laid out as FAISS writes one, or its header's
    (generation, ntotal) differs from `holds` (the caller copies).
    """
    header, _ = read_header(path)
    n, dim = int(header["ntotal"]), int(header["dim"])
    if header.get("format") != FILE_FORMAT_2 or header.get("factory") != "Flat" or header.get("tombstones"):
        return None
    if holds is not None and (header["generation"], n) != tuple(holds):
        return None
    faiss_bytes = int(header["bytes"])
    codes_end = faiss_bytes - 8 - 8 * n  # then: the id map's length (u64) and its ids (i64)
    codes_start = codes_end - 4 * n * dim  # after the codes' length (u64, in floats)
    inner = codes_start - 8 - _FLAT_HEADER - 4
    if inner < 4:
        return None
    with open(path, "rb") as f:
        outer_tag = f.read(4)
        f.seek(inner)
        inner_tag = f.read(4)
        f.seek(codes_start - 8)
        (floats,) = struct.unpack("<Q", f.read(8))
        f.seek(codes_end)
        (count,) = struct.unpack("<Q", f.read(8))
        if (outer_tag, inner_tag, floats, count) != (b"IxM2", b"IxFI", n * dim, n):
            return None
        base_ids = np.fromfile(f, dtype="<i8", count=n).astype(np.int64)
        if len(base_ids) != n:
            return None
        keep = ~np.isin(base_ids, np.asarray(drop, np.int64)) if len(drop) else np.ones(n, bool)
        total = int(keep.sum()) + len(ids)
        flat = faiss.IndexFlatIP(dim)
        index = faiss.IndexIDMap2(flat)  # (it takes only an empty index)
        flat.codes.resize(total * dim * 4)
        rows = faiss.rev_swig_ptr(flat.codes.data(), total * dim * 4).view(np.float32).reshape(total, dim)
        f.seek(codes_start)
        at = 0
        for start in range(0, n, _FLAT_CHUNK):
            count = min(_FLAT_CHUNK, n - start)
            block = np.fromfile(f, dtype="<f4", count=count * dim)
            if len(block) != count * dim:
                return None
            kept = keep[start:start + count]
            rows[at:at + int(kept.sum())] = block.reshape(count, dim)[kept]
            at += int(kept.sum())
            if progress:
                progress(count)
    rows[at:] = np.asarray(vectors, np.float32).reshape(len(ids), dim)
    if progress:
        progress(len(ids))
    flat.ntotal = total
    faiss.copy_array_to_vector(np.concatenate([base_ids[keep], np.asarray(ids, np.int64)]), index.id_map)
    index.ntotal = total
    index.construct_rev_map()
    return VectorIndex(index, "Flat", dim, params=params)


def read_file(path: Path, *, params: dict | None = None, mmap: bool = False,
              verify: bool | None = True) -> tuple[VectorIndex, dict]:
    """(the index, its header) of a vector index file of either format; IndexCorrupt when damaged.

    With `mmap`, a format-2 file is memory-mapped read-only (FAISS's IO_FLAG_MMAP_IFC): nothing
    is read until searched, and an atomic rename of a newer file over it leaves the mapping
    valid. `verify=None` checks the CRC unless the file is larger than VERIFY_MAX_BYTES. The file
    is opened by name more than once (header, FAISS), so a writer may replace it in between: it is
    read again when its identity (inode, mtime) changed meanwhile."""
    path = Path(path)
    for attempt in range(3):
        found = error = None
        try:
            before = os.stat(path)
            try:
                found = _read_file_once(path, params=params, mmap=mmap, verify=verify)
            except IndexCorrupt as e:
                error = e
            after = os.stat(path)
        except FileNotFoundError:
            raise IndexCorrupt(f"{path} is missing; run `latent rebuild`") from None
        if (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns) or attempt == 2:
            if error is not None:
                raise error
            return found


def _read_file_once(path: Path, *, params: dict | None, mmap: bool, verify: bool | None) -> tuple[VectorIndex, dict]:
    header, payload = read_header(path, with_payload=False)
    if header["format"] == FILE_FORMAT:  # format 1: header first, checked, parsed from memory
        header, payload = read_header(path, with_payload=True)
        ntomb = int(header["tombstones"])
        tombstones = np.frombuffer(payload[: 8 * ntomb], dtype="<i8").astype(np.int64)
        try:
            index = faiss.deserialize_index(np.frombuffer(payload[8 * ntomb:], dtype=np.uint8))
        except RuntimeError as e:
            raise IndexCorrupt(f"{path} cannot be parsed by FAISS ({str(e)[:120]}); run `latent rebuild`") from e
    else:
        faiss_bytes = int(header["bytes"]) - 8 * int(header["tombstones"])
        if verify or (verify is None and header["bytes"] <= _verify_limit()):
            _verify_crc(path, header)
        with open(path, "rb") as f:
            f.seek(faiss_bytes)
            tombstones = np.frombuffer(f.read(8 * int(header["tombstones"])), dtype="<i8").astype(np.int64)
        flags = (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            if not mmap:
                raise IndexCorrupt(f"{path} cannot be parsed by FAISS ({str(e)[:120]}); run `latent rebuild`") from e
            return _read_file_once(path, params=params, mmap=False, verify=False)  # a type FAISS cannot map
    vindex = VectorIndex(index, header["factory"], int(header["dim"]), generation=int(header["generation"]),
                         tombstones=tombstones, params=params)
    if index.d != vindex.dim:
        raise IndexCorrupt(f"{path} holds {index.d}-d vectors, its header says {vindex.dim}; run `latent rebuild`")
    if vindex.ntotal != int(header["ntotal"]):
        raise IndexCorrupt(f"{path} holds {vindex.ntotal} vectors, its header says {header['ntotal']}; "
                           "run `latent rebuild`")
    return vindex, header


def _verify_crc(path: Path, header: dict, f=None) -> None:
    """Check a format-2 file's checksum; through `f` when given (the handle its header was read
    from: a merge may delete the file by name meanwhile, and the open handle still reads it)."""
    if f is None:
        with open(path, "rb") as f:
            return _verify_crc(path, header, f)
    fields = {k: v for k, v in header.items() if k != "crc32"}
    crc, left = _checksum(fields), int(header["bytes"])
    f.seek(0)
    while left > 0:
        chunk = f.read(min(_CRC_CHUNK, left))
        if not chunk:
            break
        crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    if left or crc != header["crc32"]:
        raise IndexCorrupt(f"{path} is truncated or damaged (checksum mismatch); run `latent rebuild`")


def read_header(path: Path, *, with_payload: bool = False) -> tuple[dict, bytes]:
    """Parse and verify the header of a vector index file of either format (and its CRC, with
    `with_payload`; the payload itself is returned for format 1 only)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) == 12 and head[:8] == MAGIC:
                header, payload = _header_v1(f, path, head, with_payload)
            else:
                size = f.seek(0, os.SEEK_END)
                if size < _TRAILER:
                    raise IndexCorrupt(f"{path} is not a latent vector index file; run `latent rebuild`")
                f.seek(size - _TRAILER)
                tail = f.read(_TRAILER)
                (length,) = struct.unpack("<I", tail[:4])
                if tail[4:] != MAGIC2:
                    raise IndexCorrupt(f"{path} is not a latent vector index file (or is truncated); "
                                       "run `latent rebuild`")
                if length > 1 << 20 or length > size - _TRAILER:
                    raise IndexCorrupt(f"{path} has a damaged header; run `latent rebuild`")
                f.seek(size - _TRAILER - length)
                header, payload = json.loads(f.read(length)), b""
                if isinstance(header, dict) and isinstance(header.get("bytes"), int) and \
                        header["bytes"] + length + _TRAILER != size:
                    raise IndexCorrupt(f"{path} is truncated or damaged (its size does not match its header); "
                                       "run `latent rebuild`")
            _check_fields(path, header)
            if with_payload and header["format"] == FILE_FORMAT_2:
                _verify_crc(path, header, f)  # through this handle: a merge may delete the file meanwhile
    except FileNotFoundError:
        raise IndexCorrupt(f"{path} is missing; run `latent rebuild`") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexCorrupt(f"{path} has a damaged header ({e}); run `latent rebuild`") from None
    if with_payload and header["format"] == FILE_FORMAT:
        fields = {k: v for k, v in header.items() if k != "crc32"}
        if len(payload) != header["bytes"] or _checksum(fields, payload) != header["crc32"]:
            raise IndexCorrupt(f"{path} is truncated or damaged (checksum mismatch); run `latent rebuild`")
    return header, payload


def _check_fields(path: Path, header) -> None:
    """IndexCorrupt unless `header` is a dict of a known format with every field of the right type."""
    if not isinstance(header, dict) or header.get("format") not in (FILE_FORMAT, FILE_FORMAT_2):
        raise IndexCorrupt(f"{path} has an unknown format; run `latent rebuild`")
    wanted = _HEADER_FIELDS + (("since",) if header["format"] == FILE_FORMAT_2 else ())
    missing = [k for k in wanted if not isinstance(header.get(k), str if k == "factory" else int)]
    if missing:
        raise IndexCorrupt(f"{path} has a damaged header (bad {', '.join(missing)}); run `latent rebuild`")


def _header_v1(f, path: Path, head: bytes, with_payload: bool) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<I", head[8:])
    if length > 1 << 20:
        raise IndexCorrupt(f"{path} has a damaged header; run `latent rebuild`")
    header = json.loads(f.read(length))
    return header, (f.read() if with_payload else b"")


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int, *,
               ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact k best of `vectors` for each query by inner product: (scores, ids), best
    first, equal scores in the vectors' order, padded with -inf and -1 when fewer than k.

    `vectors` is (n, d), shared by the queries (FAISS's knn scans them), or (queries, n, d),
    each query's own candidates (numpy scores them); `ids` names them, (n,) or (queries, n),
    -1 for a candidate to pass over; by default their positions.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    m, n = len(queries), vectors.shape[-2]
    width = min(max(int(k), 0), n)
    out_s = np.full((m, max(int(k), 0)), -np.inf, dtype=np.float32)
    out_i = np.full(out_s.shape, -1, dtype=np.int64)
    if width == 0 or m == 0:
        return out_s, out_i
    if vectors.ndim == 3:
        scores = np.einsum("qnd,qd->qn", vectors, queries)
        if ids is not None:
            scores[np.asarray(ids) < 0] = -np.inf
        positions = _best(scores, width)
        scores = np.take_along_axis(scores, positions, axis=1)
    else:
        # One more than asked: FAISS keeps either of two equal scores at its cut, so a row
        # whose k-th and (k+1)-th scores are equal may have lost an earlier vector to a later
        # one; those rows are scored again in full.
        deeper = min(width + 1, n)
        with _threads_for(m):
            scores, positions = faiss.knn(queries, vectors, deeper, metric=faiss.METRIC_INNER_PRODUCT)
        order = np.lexsort((positions, -scores), axis=-1)
        scores, positions = np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)
        if deeper > width:
            tied = np.flatnonzero(scores[:, width - 1] == scores[:, width])
            if len(tied):
                full = queries[tied] @ vectors.T
                positions[tied, :width] = _best(full, width)
                scores[tied, :width] = np.take_along_axis(full, positions[tied, :width], axis=1)
            scores, positions = scores[:, :width], positions[:, :width]
    if ids is None:
        found = positions
    else:
        ids = np.asarray(ids, dtype=np.int64)
        found = ids[positions] if ids.ndim == 1 else np.take_along_axis(ids, positions, axis=1)
    out_s[:, :width] = scores
    out_i[:, :width] = found
    out_i[~np.isfinite(out_s)] = -1
    return out_s, out_i


class ExactTopK:
    """The running exact top-k of fixed queries among vectors added block by block (the
    store's, while an index is built): `scores` and `ids` as exact_topk gives them."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Take in a block of vectors (n, d) and their ids, later than any added before."""
        if len(ids) == 0 or len(self.queries) == 0:
            return
        scores, found = exact_topk(self.queries, vectors, self.k, ids=ids)
        both_s = np.concatenate([self.scores, scores], axis=1)  # earlier blocks first: they win ties
        both_i = np.concatenate([self.ids, found], axis=1)
        top = _best(both_s, self.k)
        self.scores = np.take_along_axis(both_s, top, axis=1)
        self.ids = np.take_along_axis(both_i, top, axis=1)


def pairs_above(vectors: np.ndarray, threshold: float, *, block: int = 2048, max_pairs: int = 20_000_000,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of rows of `vectors` whose inner product is >= `threshold`:
    (i, j, score) arrays, by an exact FAISS range search of each block of rows against all of
    them (BLAS, no Python loop over pairs). `progress(rows)` is called after each block. More
    than `max_pairs` pairs is an error: the threshold is too low for the collection."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    firsts, seconds, scores = [], [], []
    total = 0
    for start in range(0, len(vectors), block):
        lims, dist, found = flat.range_search(vectors[start:start + block], float(threshold))
        lims = lims.astype(np.int64)
        rows = np.repeat(np.arange(start, start + len(lims) - 1, dtype=np.int64), np.diff(lims))
        keep = found > rows  # each pair once, and not an item with itself
        firsts.append(rows[keep])
        seconds.append(found[keep].astype(np.int64))
        scores.append(dist[keep])
        total += int(keep.sum())
        if total > max_pairs:
            raise LatentError(f"more than {max_pairs:,} pairs of items have a similarity of {threshold} or more; "
                              "raise the threshold (or narrow the items with a filter)")
        if progress is not None:
            progress(len(lims) - 1)
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores)


def kmeans(vectors: np.ndarray, k: int, *, niter: int = 20, seed: int = 0,
           spherical: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAISS k-means of `vectors` into `k` clusters: (centroids (k, d), the cluster of each row,
    each row's inner product with its centroid). Spherical: centroids are unit vectors, so
    rows are assigned by cosine similarity, as searches rank."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(vectors.shape[1], int(k), niter=int(niter), seed=int(seed), spherical=spherical,
                      max_points_per_centroid=max(256, -(-len(vectors) // int(k))), min_points_per_centroid=1,
                      verbose=False)
    km.train(vectors)
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(km.centroids)
    scores, assigned = flat.search(vectors, 1)
    return km.centroids, assigned[:, 0].astype(np.int64), scores[:, 0]


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """The positions of the k highest scores of each row, best first, the earlier of equal scores first."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


_HEADER_FIELDS = ("format", "generation", "factory", "dim", "ntotal", "tombstones", "bytes", "crc32")


def _checksum(fields: dict, *payload) -> int:
    """CRC-32 over the header fields (canonical JSON) and the payload (in parts)."""
    crc = zlib.crc32(json.dumps(fields, sort_keys=True).encode())
    for part in payload:
        crc = zlib.crc32(part, crc)
    return crc


# Fewer queries than this run on one OpenMP thread, unless OMP_NUM_THREADS says otherwise: a
# team of threads gains nothing on one query and, on a busy machine, spins (a flat search over
# 100,000 GloVe words took 25 ms with 2 threads and 0.9 ms with 1). The count is per calling
# thread in OpenMP, so concurrent callers (the server's workers) do not interfere.
SMALL_BATCH = 20
_OMP_FROM_ENV = bool(os.environ.get("OMP_NUM_THREADS"))


@contextmanager
def _threads_for(queries: int):
    """FAISS on one OpenMP thread for a small batch of queries (see SMALL_BATCH)."""
    one_thread = queries < SMALL_BATCH and not _OMP_FROM_ENV
    before = faiss.omp_get_max_threads() if one_thread else 1
    if one_thread and before != 1:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        if one_thread and before != 1:
            faiss.omp_set_num_threads(before)


def _family(factory: str) -> str:
    return "IVF" if factory.startswith("IVF") else "HNSW" if factory.startswith("HNSW") else factory


def _hnsw_of(index):
    """The HNSW index inside `index` (through an id map), or None."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return inner if hasattr(inner, "hnsw") else None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
