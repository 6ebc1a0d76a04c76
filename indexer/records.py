"""What readers produce and ingestion consumes: a Record to index, a Skip (an input left out,
and why), and the content hash that keys a record given without a key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Union


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
