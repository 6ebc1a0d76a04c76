"""Past one machine, on Ray (the `[ray]` extra): encoding inputs on a cluster, and building
a large IVF / IVF-PQ vector index in parts.

Encoding (`latent add DIR INPUTS --ray [ADDRESS]`): a Ray Data pipeline reads each input
file in a task (the readers of indexer/readers.py, so lines, skips and their reasons are
those of a local add) and encodes the items in `map_batches` over a pool of encoder actors,
each loading the model once. The items stream back, in input order, with their vectors to
the one writer, `Index.add`, which stores them exactly as a local add does: the same keys,
upserts, skip reports and batches, each durable when reported. Whatever an actor could not
encode (an unknown word, an image it cannot read) comes back without a vector and the writer
deals with it as a local add would. A killed actor is restarted by Ray and its batch run
again; the order kept means nothing is lost or stored twice. Inputs must be readable at the
same path on every node (a shared file system), as with any Ray Data source.

Building (`latent rebuild DIR --ray`): the autofaiss recipe. The quantizer is trained once,
on the sample a local build draws; Ray tasks add blocks of the store's vectors to empty
copies of the trained index; the driver merges their inverted lists in id order. The result
is the index a local build with the same training makes, and becomes the index's vector
index through Index.install_vectors, which checks its ids against the store's.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import InputError, LatentError, OutOfVocabulary, require
from .images import ImageRecord, ImageRefused, prepare
from .readers import check_inputs, read_inputs
from .records import Item, Record, Skip

READ_ROWS = 1024  # rows a reader task hands on at a time
READ_CPUS = 0.25  # logical CPUs a reader task asks for: little, so the encoder actors never starve it
DEFAULT_CONCURRENCY = 2  # encoder actors, unless told


def connect(address: str | None = None, *, cpus: float = 0):
    """Ray, connected: to `address` ('auto', a head node's host:port, or ray://host:port), or
    with None to a Ray started here on the loopback interface with at least `cpus` logical
    CPUs (scheduling slots; at least this machine's cores). A connection made already
    (ray.init by the caller) is used as it is."""
    if not address:  # a Ray of this machine: on the loopback interface (read when ray is imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = require("ray", "ray", "--ray (encoding and building on a Ray cluster)")
    require("ray.data", "ray", "--ray (encoding and building on a Ray cluster)")
    if not ray.is_initialized():
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                         num_cpus=max(os.cpu_count() or 1, math.ceil(cpus)), **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise LatentError(f"cannot connect to Ray at {address or 'a local Ray'}: {str(e).splitlines()[0][:200]}") \
                from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plans and timings, not for a command's user
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the writer sees the inputs' order: first of a key wins
    context.enable_progress_bars = False  # the writer's progress bar tells the progress
    return ray


# -- items as rows of a Ray dataset -------------------------------------------------------------
def _row(item: Item, given: str, absolute: str) -> dict:
    """An item as a row: its fields as JSON text (ASCII: Arrow takes any of it), no vector yet.
    The input was read at its `absolute` path; its sources are named as the user `given` it."""
    source = given + item.source[len(absolute):] if item.source.startswith(absolute) else item.source
    if isinstance(item, Skip):
        doc = {"skip": [source, item.line, item.reason]}
    else:
        doc = {"text": item.text, "key": item.key, "kind": item.kind, "source": source, "line": item.line,
               "path": getattr(item, "path", None)}
        try:
            doc["metadata"] = json.dumps(item.metadata, ensure_ascii=True)
        except (TypeError, ValueError) as e:  # the writer refuses it, with this reason
            doc["metadata"], doc["unstorable"] = "{}", f"metadata cannot be stored as JSON ({e})"
    return {"item": json.dumps(doc, ensure_ascii=True), "vector": b""}


def item_of(row_item: str, vector: bytes) -> Item:
    """A row back as the Record (with its vector, if it was encoded) or Skip it was."""
    doc = json.loads(row_item)
    if "skip" in doc:
        return Skip(*doc["skip"])
    if "unstorable" in doc:
        return Skip(doc["source"], doc["line"], doc["unstorable"])
    fields = dict(text=doc["text"], key=doc["key"], metadata=json.loads(doc["metadata"]), kind=doc["kind"],
                  source=doc["source"], line=doc["line"], content_hash=doc.get("hash"),
                  vector=np.frombuffer(vector, dtype=np.float32) if vector else None)
    if doc["kind"] == "image":
        return ImageRecord(path=doc["path"], **fields)
    return Record(**fields)


def _read_input(batch: dict, **options) -> Iterator[dict]:
    """A Ray Data UDF: the rows of the input files of a batch (one file per row), read by the
    readers of a local add and handed on READ_ROWS at a time."""
    rows: list[dict] = []
    for given, absolute in zip(batch["given"], batch["path"]):
        for item in read_inputs([str(absolute)], **options):
            rows.append(_row(item, str(given), str(absolute)))
            if len(rows) >= READ_ROWS:
                yield _columns(rows)
                rows = []
    if rows:
        yield _columns(rows)


def _columns(rows: list[dict]) -> dict:
    return {"item": np.array([r["item"] for r in rows], dtype=object),
            "vector": np.array([r["vector"] for r in rows], dtype=object)}


class EncodeBatch:
    """A Ray Data UDF run by an actor pool: loads the encoder once (when first needed), then encodes the Records of
    each batch (texts and words; images read, hashed and preprocessed here). What it cannot
    encode keeps no vector, for the writer to handle as a local add would."""

    def __init__(self, encoder: str, runtime: str | None):
        self.name, self.runtime = encoder, runtime
        self._encoder = None

    @property
    def encoder(self):
        """Loaded on first use: rows that come with their vectors need no model."""
        if self._encoder is None:
            from .encoders import get_encoder

            self._encoder = get_encoder(self.name, self.runtime)
        return self._encoder

    def __call__(self, batch: dict) -> dict:
        docs = [json.loads(x) for x in batch["item"]]
        vectors = list(batch["vector"])
        texts = [i for i, d in enumerate(docs) if "skip" not in d and "unstorable" not in d and d["kind"] != "image"
                 and not vectors[i] and d["text"].strip() and _is_text(d["text"])]
        self._encode_texts(texts, docs, vectors)
        images = [i for i, d in enumerate(docs) if "skip" not in d and "unstorable" not in d
                  and d["kind"] == "image" and not vectors[i]]
        self._encode_images(images, docs, vectors)
        return {"item": np.array([json.dumps(d, ensure_ascii=True) for d in docs], dtype=object),
                "vector": np.array(vectors, dtype=object)}

    def _encode_texts(self, rows: list[int], docs: list[dict], vectors: list) -> None:
        if not rows:
            return
        try:
            encoded = self.encoder.encode([docs[i]["text"] for i in rows])
        except OutOfVocabulary as e:  # the writer reports these
            unknown = set(e.words)
            rows = [i for i in rows if docs[i]["text"] not in unknown]
            encoded = self.encoder.encode([docs[i]["text"] for i in rows])
        for i, vector in zip(rows, encoded):
            vectors[i] = np.ascontiguousarray(vector, dtype=np.float32).tobytes()

    def _encode_images(self, rows: list[int], docs: list[dict], vectors: list) -> None:
        prepared = {}
        for i in rows:
            try:
                prepared[i] = prepare(ImageRecord(text="", path=docs[i]["path"]), self.encoder.preprocess)
            except ImageRefused:  # the writer reads it again and reports why
                continue
        if not prepared:
            return
        order = list(prepared)
        encoded, extra = self.encoder.encode_preprocessed(np.stack([prepared[i].array for i in order]))
        for i, vector, more in zip(order, encoded, extra):
            doc = docs[i]
            doc["metadata"] = json.dumps({**prepared[i].metadata, **json.loads(doc["metadata"]), **more},
                                         ensure_ascii=True)
            doc["hash"] = prepared[i].sha256
            vectors[i] = np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the writer reports it
        return False
    return True


def encoded_items(inputs: Sequence[str], *, encoder: str, runtime: str | None = None, fmt: str | None = None,
                  text_field: str = "text", key_field: str | None = None, vector_field: str | None = None,
                  image_field: str | None = None, batch_size: int = 256, concurrency: int | None = None,
                  num_cpus: float = 1.0, address: str | None = None) -> Iterator[Item]:
    """The items of `inputs`, in order, encoded on Ray by `concurrency` actors of `num_cpus`
    logical CPUs each (batches of `batch_size`): Records with their vectors, and Skips. What
    `Index.add` takes; see the module's doc."""
    paths = check_inputs(inputs, fmt)
    if "-" in paths:
        raise InputError("--ray reads files that every node can read, not standard input; save it to a file first")
    concurrency = concurrency or DEFAULT_CONCURRENCY
    needed = concurrency * num_cpus + READ_CPUS
    ray = connect(address, cpus=needed)
    have = ray.cluster_resources().get("CPU", 0)
    if have < needed:  # the actors would take every slot and starve the readers: Ray Data would wait forever
        raise LatentError(f"the Ray cluster has {have:g} logical CPUs; {concurrency} encoder actors of {num_cpus:g} "
                          f"CPUs and the readers ({READ_CPUS:g}) need {needed:g}: lower the concurrency or the CPUs "
                          "per actor")
    ds = ray.data.from_items([{"given": p, "path": os.path.abspath(p)} for p in paths], override_num_blocks=len(paths))
    ds = ds.map_batches(_read_input, fn_kwargs=dict(fmt=fmt, text_field=text_field, key_field=key_field,
                                                    vector_field=vector_field, image_field=image_field),
                        batch_size=1, num_cpus=READ_CPUS)
    # blocks of one encoder batch (streaming), spread over the actors: Ray Data would otherwise
    # gather a file's rows into one block of up to 128 MiB, for one actor
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    ds = ds.map_batches(EncodeBatch, fn_constructor_args=(encoder, runtime), batch_size=batch_size,
                        compute=ray.data.ActorPoolStrategy(size=concurrency),
                        num_cpus=num_cpus)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for row_item, vector in zip(batch["item"], batch["vector"]):
            yield item_of(row_item, vector)


# -- building an IVF index in parts ------------------------------------------------------------------
def _fill(empty, ids, vectors) -> bytes:
    from .vector_index import VectorIndex

    return VectorIndex.fill_shard(empty, ids, vectors)


def build_in_parts(vindex, blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], *,
                   address: str | None = None, inflight: int = 4, num_cpus: float = 1.0,
                   progress: Callable[[int], None] | None = None):
    """Fill the trained, empty IVF `vindex` with the (ids, vectors) `blocks` on Ray: each block
    is added to an empty copy by a task, and the filled copies are merged into `vindex` in the
    order of the blocks (at most `inflight` tasks at a time). Returns `vindex`, holding what a
    local `add` of the same blocks in order would."""
    ray = connect(address)
    fill = ray.remote(num_cpus=num_cpus, max_retries=3)(_fill)
    empty = ray.put(vindex.empty_copy())
    pending: deque = deque()

    def merge_oldest() -> None:
        ref, n = pending.popleft()
        vindex.merge_shard(ray.get(ref))
        if progress:
            progress(n)

    for ids, vectors in blocks():
        pending.append((fill.remote(empty, ids, vectors), len(ids)))
        if len(pending) >= inflight:
            merge_oldest()
    while pending:
        merge_oldest()
    return vindex
