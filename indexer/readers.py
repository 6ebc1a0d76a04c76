"""Readers: turn input files into Records (key, text, metadata) and Skips (bad lines
with their line numbers and reasons). Formats: lines, words, csv, jsonl, and images
(folders, recursively; see indexer/images.py)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Union

from .errors import InputError

FORMATS = ("lines", "words", "csv", "jsonl", "images")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "lines"}
_INT = re.compile(r"-?(0|[1-9]\d*)")
_FLOAT = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")


@dataclass
class Record:
    """One item to index. `key` None means: derive it from the content hash."""

    text: str
    key: str | None = None
    metadata: dict = field(default_factory=dict)
    kind: str = "text"
    source: str = ""
    line: int | None = None


@dataclass
class Skip:
    """An input that was not indexed, and why."""

    source: str
    line: int | None
    reason: str


Item = Union[Record, Skip]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def detect_format(path: str) -> str:
    """By extension: .csv, .jsonl/.ndjson, images; folders hold images; anything else is lines."""
    from .images import IMAGE_EXTENSIONS

    p = Path(path)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS:
        return "images"
    return _EXTENSIONS.get(p.suffix.lower(), "lines")


def check_inputs(paths: Iterable[str], fmt: str | None = None) -> list[str]:
    """Fail early, before anything is written, when an input cannot be opened."""
    paths = list(paths)
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    for p in paths:
        if p == "-":
            if fmt == "images":
                raise InputError("images cannot come from standard input; give files or folders")
            continue
        path = Path(p)
        if not path.exists():
            raise InputError(f"input {p} does not exist")
        if path.is_dir() and fmt not in (None, "images"):
            raise InputError(f"input {p} is a folder; folders are read as --format images")
    return paths


def read_inputs(paths: Iterable[str], *, fmt: str | None = None, text_field: str = "text",
                key_field: str | None = None) -> Iterator[Item]:
    """Records and Skips from every input, in order. `fmt` None: by extension (see detect_format)."""
    from .images import read_images

    for p in check_inputs(paths, fmt):
        f = fmt or ("lines" if p == "-" else detect_format(p))
        if f == "images":
            yield from read_images([p])
        elif f in ("csv", "jsonl"):
            reader = _read_csv if f == "csv" else _read_jsonl
            yield from reader(p, text_field=text_field, key_field=key_field)
        else:
            yield from (_read_lines if f == "lines" else _read_words)(p)


def _decoded_lines(path: str) -> Iterator[tuple[int, str | None]]:
    """(line number, text without the line end) per line; text None when it is not valid UTF-8."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield number, None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _read_lines(path: str) -> Iterator[Item]:
    """One item per non-blank line; blank lines separate, they are not data."""
    name = Path(path).name if path != "-" else "<stdin>"
    for number, text in _decoded_lines(path):
        if text is None:
            yield Skip(path, number, "not valid UTF-8")
        elif text.strip():
            yield Record(text=text.strip(), metadata={"source": name, "line": number}, source=path, line=number)


def _read_words(path: str) -> Iterator[Item]:
    """One word per non-blank line; the word is the key."""
    for number, text in _decoded_lines(path):
        if text is None:
            yield Skip(path, number, "not valid UTF-8")
        elif text.strip():
            word = text.strip()
            yield Record(text=word, key=word, kind="word", source=path, line=number)


def _record_from_fields(row: dict, path: str, number: int, text_field: str, key_field: str | None) -> Item:
    text = row.get(text_field)
    if text is None:
        return Skip(path, number, f"no field {text_field!r} (use --text-field to choose the text column)")
    if not isinstance(text, str):
        return Skip(path, number, f"field {text_field!r} is {type(text).__name__}, not text")
    if not text.strip():
        return Skip(path, number, "empty text")
    key = None
    if key_field:
        value = row.get(key_field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return Skip(path, number, f"no key field {key_field!r}")
        key = str(value)
    metadata = {k: v for k, v in row.items() if k != text_field}
    return Record(text=text, key=key, metadata=metadata, source=path, line=number)


def _read_jsonl(path: str, *, text_field: str, key_field: str | None) -> Iterator[Item]:
    for number, line in _decoded_lines(path):
        if line is None:
            yield Skip(path, number, "not valid UTF-8")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constants)
        except json.JSONDecodeError as e:
            yield Skip(path, number, f"malformed JSON ({e.msg} at column {e.colno})")
            continue
        except ValueError as e:  # NaN, Infinity
            yield Skip(path, number, f"malformed JSON ({e})")
            continue
        if not isinstance(row, dict):
            yield Skip(path, number, f"a JSON {_JSON_TYPES.get(type(row), 'value')}, not an object")
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


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def _read_csv(path: str, *, text_field: str, key_field: str | None) -> Iterator[Item]:
    skips: list[Skip] = []
    current = [0]
    first: list[int | None] = [None]  # first line of the record being read

    def good_lines() -> Iterator[str]:
        for number, text in _decoded_lines(path):
            current[0] = number
            if text is None:
                skips.append(Skip(path, number, "not valid UTF-8"))
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
        yield from _drain(skips)
        number = start = first[0] or current[0]  # a record is numbered by its first line
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            span = f" (lines {start}-{current[0]}: an unclosed quote?)" if current[0] > start else ""
            yield Skip(path, number, f"{len(cells)} fields, the header has {len(header)}{span}")
            continue
        row = {h: (c if h in (text_field, key_field) else _typed(c)) for h, c in zip(header, cells)}
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
