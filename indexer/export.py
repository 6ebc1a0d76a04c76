"""`latent export`: every item of an index (key, kind, text, path, metadata, vector) written
to a Parquet, JSON Lines or NumPy file, read in one snapshot of the store.

A Parquet file is marked as an export in its schema (readers.EXPORT_MARK), so `latent add`
takes it back: the same keys, metadata and vectors, not encoded again. An index can move
between machines and tools this way. The .npy form holds the vectors only, (n, dim) float32;
the items they belong to go, row for row, to a JSON Lines file beside it (NAME.items.jsonl)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import InputError, require
from .readers import EXPORT_MARK

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npy": "npy"}
CHUNK = 10_000  # items read from the store at a time


def export_format(path: str | Path) -> str:
    """The format an output path asks for, by its extension; InputError for another."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path}: name it .parquet, .jsonl or .npy")
    return fmt


def items_sidecar(path: str | Path) -> Path:
    """Where the items of an .npy export go: NAME.items.jsonl beside NAME.npy."""
    path = Path(path)
    return path.with_name(path.stem + ".items.jsonl")


def _chunks(index) -> Iterator[tuple[list[dict], np.ndarray]]:
    """(items in id order, their vectors), CHUNK at a time, all read in one snapshot."""
    with index.snapshot():
        ids = index.ids()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            rows = index.fetch(chunk)
            yield [{"key": rows[i]["key"], "kind": rows[i]["kind"], "text": rows[i]["text"],
                    "path": rows[i]["path"], "metadata": rows[i]["metadata"]} for i in chunk.tolist()], \
                index.vectors_of(chunk)


def export(index, out: str | Path, *, progress: Callable[[str, int, int | None], None] | None = None) -> dict:
    """Write every item of `index` to `out` (.parquet, .jsonl or .npy; see the module's doc).
    The file is written beside and moved into place when complete. Returns {count, format,
    files, dim}."""
    out = Path(out)
    fmt = export_format(out)
    total = index.count()
    progress = progress or (lambda stage, n, total: None)
    progress("export", 0, total)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    files = [out]
    count = 0
    try:
        if fmt == "parquet":
            count = _write_parquet(index, tmp, progress, total)
        elif fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for items, vectors in _chunks(index):
                    for item, vector in zip(items, vectors):
                        f.write(json.dumps({**item, "vector": vector.tolist()}, ensure_ascii=False) + "\n")
                    count += len(items)
                    progress("export", len(items), total)
        else:
            sidecar = items_sidecar(out)
            files.append(sidecar)
            side_tmp = sidecar.with_name(f".{sidecar.name}.tmp-{os.getpid()}")
            parts = []
            with open(side_tmp, "w", encoding="utf-8") as f:
                for items, vectors in _chunks(index):
                    for item in items:
                        f.write(json.dumps(item, ensure_ascii=False) + "\n")
                    parts.append(vectors)
                    count += len(items)
                    progress("export", len(items), total)
            with open(tmp, "wb") as f:
                np.save(f, np.concatenate(parts) if parts else np.zeros((0, index.dim), np.float32),
                        allow_pickle=False)
            os.replace(side_tmp, sidecar)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"count": count, "format": fmt, "files": [str(f) for f in files], "dim": index.dim}


def _write_parquet(index, path: Path, progress, total: int) -> int:
    pa = require("pyarrow", "all", "exporting to Parquet")
    pq = require("pyarrow.parquet", "all", "exporting to Parquet")
    mark = json.dumps({"encoder": index.encoder_name, "dim": index.dim}).encode()
    schema = pa.schema([("key", pa.string()), ("kind", pa.string()), ("text", pa.string()), ("path", pa.string()),
                        ("metadata", pa.string()), ("vector", pa.list_(pa.float32(), index.dim))],
                       metadata={EXPORT_MARK: mark})
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        for items, vectors in _chunks(index):
            columns = {name: [item[name] for item in items] for name in ("key", "kind", "text", "path")}
            columns["metadata"] = [json.dumps(item["metadata"], ensure_ascii=False, sort_keys=True) for item in items]
            flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
            columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, index.dim)
            writer.write_table(pa.table(columns, schema=schema))
            count += len(items)
            progress("export", len(items), total)
    return count
