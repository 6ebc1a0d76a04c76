"""Readers: turn input files into Records (key, text, metadata) and Skips (bad lines
with their line numbers and reasons). Formats: lines, words, csv, jsonl, and images
(folders, recursively; see indexer/images.py).

Text is read a line at a time with a bounded length: a line longer than MAX_LINE_BYTES
(1 MiB, not counting its line end) is skipped ("line longer than 1 MiB") and read past in
pieces, never held in memory whole. Lines that are not valid UTF-8 or hold NUL bytes are
skipped; a file that is empty, or binary from its first bytes (an image, UTF-16, NUL bytes),
is skipped whole with the reason."""

from __future__ import annotations

import csv
import errno
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
from .images import IMAGE_EXTENSIONS, looks_like_image, read_images
from .records import Item, Record, Skip

FORMATS = ("lines", "words", "csv", "jsonl", "images")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "lines"}
_INT = re.compile(r"-?(0|[1-9]\d*)")
_FLOAT = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
# The longest line (or CSV/JSONL record line) read, in bytes without its line end; longer
# ones are skipped with LINE_TOO_LONG and streamed past without being held in memory.
MAX_LINE_BYTES = 1 << 20
LINE_TOO_LONG = (f"line longer than {MAX_LINE_BYTES >> 20} MiB" if MAX_LINE_BYTES % (1 << 20) == 0
                 else f"line longer than {MAX_LINE_BYTES:,} bytes")
_SNIFF_BYTES = 8192  # how much of a text input's start is checked for binary content


def detect_format(path: str) -> str:
    """By extension: .csv, .jsonl/.ndjson, images; folders hold images; anything else is lines."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS:
        return "images"
    return _EXTENSIONS.get(p.suffix.lower(), "lines")


def check_inputs(paths: Iterable[str], fmt: str | None = None) -> list[str]:
    """Fail early, before anything is written, when an input cannot be opened: it does not
    exist, is a broken symlink or a symlink loop, or is a file that cannot be read."""
    paths = list(paths)
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
            if fmt not in (None, "images"):
                raise InputError(f"input {p} is a folder; folders are read as format 'images'")
        elif stat.S_ISREG(st.st_mode):  # a pipe is not opened here: that would take its data or block
            try:
                os.close(os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
            except OSError as e:
                raise InputError(f"cannot read input {p}: {e.strerror or e}") from None
    return paths


def read_inputs(paths: Iterable[str], *, fmt: str | None = None, text_field: str = "text",
                key_field: str | None = None) -> Iterator[Item]:
    """Records and Skips from every input, in order. `fmt` None: by extension (see detect_format)."""
    for p in check_inputs(paths, fmt):
        f = fmt or ("lines" if p == "-" else detect_format(p))
        if f == "images":
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
