"""Readers: turn input files into Records (key, text, metadata) and Skips (bad lines
with their line numbers and reasons). Formats: lines, words, csv, jsonl, parquet (files,
folders of them, or globs; a text, key, image-path or vector column) and images (folders,
recursively; see indexer/images.py).

Text is read a line at a time with a bounded length: a line longer than MAX_LINE_BYTES
(1 MiB, not counting its line end) is skipped ("line longer than 1 MiB") and read past in
pieces, never held in memory whole. Lines that are not valid UTF-8 or hold NUL bytes are
skipped; a file that is empty, or binary from its first bytes (an image, UTF-16, NUL bytes),
is skipped whole with the reason."""

from __future__ import annotations

import csv
import datetime
import errno
import glob
import io
import json
import math
import os
import re
import stat
import sys
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError
from .images import IMAGE_EXTENSIONS, ImageRecord, looks_like_image, read_images
from .records import Item, Record, Skip

FORMATS = ("lines", "words", "csv", "jsonl", "parquet", "images")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "lines", ".parquet": "parquet"}
EXPORT_MARK = b"latent.export"  # the schema metadata key of a Parquet file `latent export` wrote
_INT = re.compile(r"-?(0|[1-9]\d*)")
_FLOAT = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
# The longest line (or CSV/JSONL record line) read, in bytes without its line end; longer
# ones are skipped with LINE_TOO_LONG and streamed past without being held in memory.
MAX_LINE_BYTES = 1 << 20
LINE_TOO_LONG = (f"line longer than {MAX_LINE_BYTES >> 20} MiB" if MAX_LINE_BYTES % (1 << 20) == 0
                 else f"line longer than {MAX_LINE_BYTES:,} bytes")
_SNIFF_BYTES = 8192  # how much of a text input's start is checked for binary content


def detect_format(path: str) -> str:
    """By extension: .csv, .jsonl/.ndjson, .parquet, images; folders hold images; anything else is lines."""
    p = Path(path)
    if p.suffix.lower() == ".parquet":
        return "parquet"
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS:
        return "images"
    return _EXTENSIONS.get(p.suffix.lower(), "lines")


def expand_inputs(paths: Iterable[str]) -> list[str]:
    """The inputs with each glob (a path holding *, ? or [ that names no file itself) replaced
    by the files it matches, sorted; InputError when a glob matches nothing."""
    out: list[str] = []
    for p in paths:
        if p != "-" and any(c in p for c in "*?[") and not os.path.lexists(p):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise InputError(f"input {p} matches no file")
            out.extend(matches)
        else:
            out.append(p)
    return out


def check_inputs(paths: Iterable[str], fmt: str | None = None) -> list[str]:
    """Fail early, before anything is written, when an input cannot be opened: it does not
    exist, is a broken symlink or a symlink loop, or is a file that cannot be read. Globs
    are expanded (see expand_inputs); the inputs are returned."""
    paths = expand_inputs(paths)
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    for p in paths:
        if p == "-":
            if fmt == "images":
                raise InputError("images cannot come from standard input; give files or folders")
            continue
        path = Path(p)
        try:
            st = os.stat(p)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InputError(f"input {p} is a symlink loop") from None
            if path.is_symlink():
                raise InputError(f"input {p} is a broken symlink (to {os.readlink(p)})") from None
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise InputError(f"input {p} does not exist") from None
            raise InputError(f"cannot read input {p}: {e.strerror or e}") from None
        if stat.S_ISDIR(st.st_mode):
            if fmt not in (None, "images", "parquet"):
                raise InputError(f"input {p} is a folder; folders are read as format 'images' (or 'parquet': "
                                 "the .parquet files in it)")
        elif stat.S_ISREG(st.st_mode):  # a pipe is not opened here: that would take its data or block
            try:
                os.close(os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
            except OSError as e:
                raise InputError(f"cannot read input {p}: {e.strerror or e}") from None
    return paths


def read_inputs(paths: Iterable[str], *, fmt: str | None = None, text_field: str = "text",
                key_field: str | None = None, vector_field: str | None = None,
                image_field: str | None = None) -> Iterator[Item]:
    """Records and Skips from every input, in order. `fmt` None: by extension (see detect_format).
    `vector_field` and `image_field` name the columns of Parquet inputs holding vectors made
    elsewhere or image paths (see read_parquet)."""
    for p in check_inputs(paths, fmt):
        f = fmt or ("lines" if p == "-" else detect_format(p))
        if f == "parquet":
            for part in parquet_files(p):
                yield from read_parquet(part, text_field=text_field, key_field=key_field,
                                        vector_field=vector_field, image_field=image_field)
        elif f == "images":
            yield from read_images([p])
        elif f in ("csv", "jsonl"):
            reader = _read_csv if f == "csv" else _read_jsonl
            yield from reader(p, text_field=text_field, key_field=key_field)
        else:
            yield from (_read_lines if f == "lines" else _read_words)(p)


def _binary(head: bytes) -> str | None:
    """Why a text input whose first bytes are `head` is not text, or None."""
    if looks_like_image(head):
        return "binary file, not text: an image (read images as format 'images')"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text; only UTF-8 is read"
    if b"\x00" in head:
        return "binary file, not text (it holds NUL bytes)"
    return None


def _bounded_lines(stream) -> Iterator[bytes | None]:
    """The lines of a binary stream, line ends included; None for a line over MAX_LINE_BYTES,
    whose rest is read past in pieces. At most MAX_LINE_BYTES + 2 bytes are held at a time."""
    limit = MAX_LINE_BYTES + 2  # room for a line end
    while raw := stream.readline(limit):
        if len(raw) < limit or raw.endswith(b"\n"):  # a whole line (or the last, unended)
            yield raw if len(raw.rstrip(b"\r\n")) <= MAX_LINE_BYTES else None
            continue
        while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
            pass
        yield None


def _decoded_lines(path: str) -> Iterator[tuple[int | None, str | Skip]]:
    """(line number, text without the line end) per line, or (line number, Skip) for a line
    that is too long, not valid UTF-8 or holds NUL bytes; (None, Skip) alone for a file that
    is empty or not text at all."""
    try:
        opened = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    stream = opened if hasattr(opened, "peek") else io.BufferedReader(opened)
    try:
        head = stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]  # like git, binary when NUL bytes are there
        if not head:
            if path != "-":
                yield None, Skip(path, None, "empty file")
            return
        reason = _binary(head[3:] if head.startswith(b"\xef\xbb\xbf") else head)
        if reason:
            yield None, Skip(path, None, reason)
            return
        for number, raw in enumerate(_bounded_lines(stream), start=1):
            if raw is None:
                yield number, Skip(path, number, LINE_TOO_LONG)
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield number, Skip(path, number, "not valid UTF-8")
                continue
            yield number, (Skip(path, number, "NUL bytes in the line (binary data?)") if "\x00" in text else text)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    finally:
        if opened is not sys.stdin.buffer:
            opened.close()


def _read_lines(path: str) -> Iterator[Item]:
    """One item per non-blank line; blank lines separate, they are not data."""
    name = Path(path).name if path != "-" else "<stdin>"
    for number, text in _decoded_lines(path):
        if isinstance(text, Skip):
            yield text
        elif text.strip():
            yield Record(text=text.strip(), metadata={"source": name, "line": number}, source=path, line=number)


def _read_words(path: str) -> Iterator[Item]:
    """One word per non-blank line; the word is the key."""
    for number, text in _decoded_lines(path):
        if isinstance(text, Skip):
            yield text
        elif text.strip():
            word = text.strip()
            yield Record(text=word, key=word, kind="word", source=path, line=number)


def _record_from_fields(row: dict, path: str, number: int, text_field: str, key_field: str | None) -> Item:
    text = row.get(text_field)
    if text is None:
        return Skip(path, number, f"no field {text_field!r} (text_field chooses the text column)")
    if not isinstance(text, str):
        return Skip(path, number, f"field {text_field!r} is {type(text).__name__}, not text")
    if not text.strip():
        return Skip(path, number, "empty text")
    key = None
    if key_field:
        value = row.get(key_field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return Skip(path, number, f"no key field {key_field!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            # 1.0, true or [1] would need a lossy spelling as text: two rows could end up with one key
            return Skip(path, number, f"the key field {key_field!r} holds {_JSON_TYPES.get(type(value), 'a value')} "
                                      f"{json.dumps(value)[:40]}, not text or a whole number; quote it")
        key = str(value)  # a whole number is its decimal digits; 1 and "1" are then the same key
    metadata = {k: v for k, v in row.items() if k != text_field}
    return Record(text=text, key=key, metadata=metadata, source=path, line=number)


def _read_jsonl(path: str, *, text_field: str, key_field: str | None) -> Iterator[Item]:
    for number, line in _decoded_lines(path):
        if isinstance(line, Skip):
            yield line
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constants)
        except json.JSONDecodeError as e:
            yield Skip(path, number, f"malformed JSON ({e.msg} at column {e.colno})")
            continue
        except ValueError as e:  # NaN, Infinity, integers of more than 4,300 digits
            yield Skip(path, number, f"malformed JSON ({e})")
            continue
        except RecursionError:
            yield Skip(path, number, "JSON nested too deeply to read")
            continue
        if not isinstance(row, dict):
            yield Skip(path, number, f"a JSON value ({_JSON_TYPES.get(type(row), 'a value')}), not an object")
            continue
        yield _record_from_fields(row, path, number, text_field, key_field)


def _typed(value: str):
    """CSV cells that are plain numbers become numbers, so filters like year>=2000 compare numerically."""
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value) and math.isfinite(float(value)):
        return float(value)
    return value


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _read_csv(path: str, *, text_field: str, key_field: str | None) -> Iterator[Item]:
    skips: list[Skip] = []
    current = [0]
    first: list[int | None] = [None]  # first line of the record being read

    def good_lines() -> Iterator[str]:
        for number, text in _decoded_lines(path):
            current[0] = number or 0
            if isinstance(text, Skip):
                skips.append(text)
                continue
            if first[0] is None:
                first[0] = number
            yield text + "\n"

    reader = csv.reader(good_lines())
    try:
        header = next(reader)
    except StopIteration:
        yield from skips
        return
    except csv.Error as e:
        raise InputError(f"cannot read the CSV header of {path}: {e}") from e
    header = [h.strip() for h in header]
    while True:
        first[0] = None
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield from _drain(skips)
            yield Skip(path, first[0] or current[0], f"malformed CSV ({e})")
            continue
        number = start = first[0] or current[0]  # a record is numbered by its first line
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            span = ""
            if current[0] > start:  # the lines skipped inside the span are part of this one report
                inside = [s.line for s in skips if s.line is not None and start < s.line <= current[0]]
                skips[:] = [s for s in skips if s.line is None or not start < s.line <= current[0]]
                span = (f" (lines {start}-{current[0]}: an unclosed quote?"
                        + (f"; line{'s' if len(inside) > 1 else ''} {', '.join(map(str, inside))} not valid UTF-8"
                           if inside else "") + ")")
            yield from _drain(skips)
            yield Skip(path, number, f"{len(cells)} fields, the header has {len(header)}{span}")
            continue
        yield from _drain(skips)
        try:
            row = {h: (c if h in (text_field, key_field) else _typed(c)) for h, c in zip(header, cells)}
        except ValueError:  # int() refuses more than sys.get_int_max_str_digits() (4,300) digits
            yield Skip(path, number, f"a number of more than {sys.get_int_max_str_digits():,} digits")
            continue
        yield _record_from_fields(row, path, number, text_field, key_field)
    yield from _drain(skips)


def _drain(skips: list[Skip]) -> Iterator[Skip]:
    while skips:
        yield skips.pop(0)


def records_from_texts(texts: Iterable[str], *, keys: Iterable[str] | None = None,
                       metadata: Iterable[dict] | None = None, kind: str = "text") -> Iterator[Record]:
    """Records from Python values, for the API: texts with optional keys and metadata."""
    texts = list(texts)
    keys = list(keys) if keys is not None else [None] * len(texts)
    metas = list(metadata) if metadata is not None else [{} for _ in texts]
    if not (len(keys) == len(metas) == len(texts)):
        raise InputError(f"{len(texts)} texts, {len(keys)} keys and {len(metas)} metadata dicts: give one of each per item")
    for i, (text, key, meta) in enumerate(zip(texts, keys, metas)):
        yield Record(text=text, key=key, metadata=dict(meta), kind=kind, source="<api>", line=i + 1)


_DICT_FIELDS = ("text", "key", "metadata", "kind")


def as_items(items: Iterable[Record | Skip | str | dict]) -> Iterator[Item]:
    """What `Index.add` takes, as Records and Skips: a text (str) is a Record of that text;
    a dict has a "text" and may have a "key", a "metadata" dict and a "kind"."""
    if isinstance(items, (str, bytes, dict)):
        raise InputError("add takes a list of items (texts, dicts or Records), not a single "
                         f"{type(items).__name__}; wrap it in a list")
    for i, item in enumerate(items):
        if isinstance(item, (Record, Skip)):
            yield item
        elif isinstance(item, str):
            yield Record(text=item, source="<api>", line=i + 1)
        elif isinstance(item, dict):
            unknown = sorted(set(item) - set(_DICT_FIELDS))
            if unknown or "text" not in item:
                raise InputError(f"item {i + 1}: a dict item has the fields {', '.join(_DICT_FIELDS)} (\"text\" "
                                 f"required){'; unknown: ' + ', '.join(map(str, unknown)) if unknown else ''}")
            meta = item.get("metadata") or {}
            if not isinstance(meta, dict):
                raise InputError(f"item {i + 1}: \"metadata\" must be a dict, got {type(meta).__name__}")
            yield Record(text=item["text"], key=item.get("key"), metadata=dict(meta), kind=item.get("kind", "text"),
                         source="<api>", line=i + 1)
        else:
            raise InputError(f"item {i + 1}: expected a text, a dict or a Record, got {type(item).__name__}")


# -- Parquet ------------------------------------------------------------------------------------
PARQUET_BATCH = 4096  # rows read at a time


def parquet_files(path: str) -> list[str]:
    """A Parquet input as files: the file itself, or the .parquet files under a folder (a
    dataset written in parts), sorted."""
    if os.path.isdir(path):
        files = sorted(str(f) for f in Path(path).rglob("*.parquet") if f.is_file())
        if not files:
            raise InputError(f"folder {path} holds no .parquet files")
        return files
    return [path]


def _parquet(path: str):
    from .errors import require
    pq = require("pyarrow.parquet", "all", "reading Parquet")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid, OSError
        raise InputError(f"cannot read {path} as Parquet ({str(e).splitlines()[0][:200]})") from None


def parquet_columns(path: str) -> dict[str, str]:
    """{column: its Arrow type} of a Parquet file (the first file of a folder)."""
    schema = _parquet(parquet_files(path)[0]).schema_arrow
    return {f.name: str(f.type) for f in schema}


def is_export(path: str) -> bool:
    """True when a Parquet input (its first file) was written by `latent export`."""
    return EXPORT_MARK in (_parquet(parquet_files(path)[0]).schema_arrow.metadata or {})


def parquet_vector_dim(path: str, field: str) -> int | None:
    """The length of the vectors in column `field` of a Parquet input: from a fixed-size list
    type, else from the first row that has one; None when no row has one."""
    import pyarrow as pa

    for part in parquet_files(path):
        pf = _parquet(part)
        if field not in pf.schema_arrow.names:
            raise InputError(f"{part} has no column {field!r} (its columns: {', '.join(pf.schema_arrow.names)})")
        kind = pf.schema_arrow.field(field).type
        if pa.types.is_fixed_size_list(kind):
            return kind.list_size
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH, columns=[field]):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    return len(value)
    return None


def _plain(value):
    """A Parquet cell as a JSON value: dates and times as ISO text; others as they are."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_parquet(path: str, *, text_field: str = "text", key_field: str | None = None,
                 vector_field: str | None = None, image_field: str | None = None) -> Iterator[Item]:
    """Records and Skips of one Parquet file, a row at a time (rows are numbered from 1 as lines).

    Each row is one item: the text of `text_field` (as a CSV row's), or the image file named
    by `image_field` (relative to the Parquet file's folder), or, with `vector_field`, the
    vector in that column, made elsewhere (its text, if the row has one, is kept with it).
    The other columns are the metadata. A file written by `latent export` (marked in its
    schema) gives back its items: their kind and path, and the metadata of its JSON
    `metadata` column."""
    pf = _parquet(path)
    names = pf.schema_arrow.names
    exported = is_export(path)
    if exported:  # its items come back with their keys and vectors
        key_field, vector_field = key_field or "key", vector_field or "vector"
    for field in (vector_field, image_field):
        if field and field not in names:
            raise InputError(f"{path} has no column {field!r} (its columns: {', '.join(names)})")
    number = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
        for row in batch.to_pylist():
            number += 1
            row = {k: _plain(v) for k, v in row.items()}
            if exported:
                kind, where = row.pop("kind", None), row.pop("path", None)
                extra = row.pop("metadata", None)
                try:
                    metadata = json.loads(extra) if extra else {}
                except ValueError:
                    yield Skip(path, number, "the metadata column holds text that is not JSON")
                    continue
                if not isinstance(metadata, dict):
                    yield Skip(path, number, "the metadata column holds JSON that is not an object")
                    continue
                row = {**metadata, **row}
            else:
                kind = where = None
            if vector_field:
                yield _vector_row(row, path, number, text_field, key_field, vector_field, kind, where, exported)
            elif image_field:
                yield _image_row(row, path, number, key_field, image_field)
            else:
                yield _record_from_fields(row, path, number, text_field, key_field)


def _row_key(row: dict, path: str, number: int, key_field: str | None) -> str | Skip | None:
    if not key_field:
        return None
    value = row.get(key_field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return Skip(path, number, f"no key field {key_field!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Skip(path, number, f"the key field {key_field!r} holds {_JSON_TYPES.get(type(value), 'a value')}, "
                                  "not text or a whole number")
    return str(value)


def _vector_row(row: dict, path: str, number: int, text_field: str, key_field: str | None, vector_field: str,
                kind: str | None, where: str | None, exported: bool = False) -> Item:
    import numpy as np

    from .records import content_hash

    value = row.pop(vector_field, None)
    if value is None:
        return Skip(path, number, f"no vector in field {vector_field!r}")
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return Skip(path, number, f"field {vector_field!r} does not hold a list of numbers")
    if vector.ndim != 1:
        return Skip(path, number, f"field {vector_field!r} holds an array of shape {vector.shape}, not a vector")
    key = _row_key(row, path, number, key_field)
    if isinstance(key, Skip):
        return key
    if exported:  # the key is the item's, not a metadata field
        row.pop(key_field, None)
    text = row.pop(text_field, None)
    if text is not None and not isinstance(text, str):
        return Skip(path, number, f"field {text_field!r} is {type(text).__name__}, not text")
    kind = kind if kind in ("text", "word", "image", "vector") else ("text" if text else "vector")
    digest = content_hash((text or "") + "\0" + vector.tobytes().hex()) if kind != "image" else \
        row.get("sha256") or content_hash(vector.tobytes().hex())
    if kind == "image":
        return ImageRecord(text="", key=key, metadata=row, kind="image", source=path, line=number,
                           path=where or "", vector=vector, content_hash=digest)
    return Record(text=text or "", key=key, metadata=row, kind=kind, source=path, line=number, vector=vector,
                  content_hash=digest)


def _image_row(row: dict, path: str, number: int, key_field: str | None, image_field: str) -> Item:
    value = row.pop(image_field, None)
    if not isinstance(value, str) or not value.strip():
        return Skip(path, number, f"no image path in field {image_field!r}")
    key = _row_key(row, path, number, key_field)
    if isinstance(key, Skip):
        return key
    file = Path(path).parent / value
    return ImageRecord(text="", key=key if key is not None else value, metadata=row, kind="image",
                       source=path, line=number, path=str(file.resolve()))
