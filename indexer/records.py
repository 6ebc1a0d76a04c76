"""What readers produce and ingestion consumes: a Record to index, a Skip (an input left out,
and why), and the content hash that keys a record given without a key."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass
class Record:
    """One item to index. `key` None means: derive it from the content hash.

    `vector` is set when the item was encoded elsewhere (a Ray worker, a vector column of a
    Parquet file): it is stored as given (normalised) instead of being encoded. `content_hash`
    then says what the vector is of (an image file's SHA-256, or the hash of a vector brought
    without the text it came from); None means the hash of `text`."""

    text: str
    key: str | None = None
    metadata: dict = field(default_factory=dict)
    kind: str = "text"
    source: str = ""
    line: int | None = None
    vector: Any = None  # a float (dim,) numpy array, or None
    content_hash: str | None = None


@dataclass
class Skip:
    """An input that was not indexed, and why."""

    source: str
    line: int | None
    reason: str


Item = Union[Record, Skip]

SKIP_EXAMPLES = 20  # skips kept in memory per reason, as examples for the report
SKIP_REASONS = 100  # reasons counted apart; skips of further reasons are counted together
OTHER_REASONS = "other reasons"
# the parts of a reason that name one line's value: quoted text and numbers
_PARTICULAR = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\d[\d,.]*")


def reason_kind(reason: str) -> str:
    """What a reason says without the particular value it names ("'zzqqxx' is not in the glove
    vocabulary" -> "... is not in the glove vocabulary"), so that skips group by kind."""
    return _PARTICULAR.sub("...", reason)


class SkipTally:
    """The skips of one add in bounded memory: a count per kind of reason (see `reason_kind`;
    up to SKIP_REASONS kinds, further ones are counted as OTHER_REASONS) and the first
    SKIP_EXAMPLES skips of each kind as examples. The skips themselves go to the store."""

    def __init__(self, examples: int = SKIP_EXAMPLES, reasons: int = SKIP_REASONS):
        self.total = 0
        self._examples, self._reasons = examples, reasons
        self._kinds: dict[str, list] = {}  # kind -> [count, first reason, all reasons the same, examples]
        self._sources: dict[str, int] = {}  # source -> rank of first appearance, for the example order

    def add(self, skip: Skip) -> None:
        self.total += 1
        kind = reason_kind(skip.reason)
        entry = self._kinds.get(kind)
        if entry is None:
            if len(self._kinds) >= self._reasons:
                kind = OTHER_REASONS
                entry = self._kinds.get(kind)
            if entry is None:
                entry = self._kinds[kind] = [0, skip.reason, kind != OTHER_REASONS, []]
        entry[0] += 1
        entry[2] = entry[2] and skip.reason == entry[1]
        if len(entry[3]) < self._examples:
            self._sources.setdefault(skip.source, len(self._sources))
            entry[3].append(skip)

    def counts(self) -> dict[str, int]:
        """{reason: skips}, most first; a reason that varied between lines is shown by its kind."""
        shown = {(e[1] if e[2] else kind): e[0] for kind, e in self._kinds.items()}
        return dict(sorted(shown.items(), key=lambda kv: -kv[1]))

    def examples(self) -> list[Skip]:
        """The skips kept as examples, in input order (by source, then line)."""
        kept = [s for e in self._kinds.values() for s in e[3]]
        order = {id(s): n for n, s in enumerate(kept)}
        return sorted(kept, key=lambda s: (self._sources.get(s.source, len(self._sources)),
                                           -1 if s.line is None else s.line, order[id(s)]))


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
