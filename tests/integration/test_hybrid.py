"""Keyword and hybrid search with minilm on real texts: the 400 demo sentences plus the 48 HTTP
status descriptions of Python's `http.HTTPStatus` ("429 Too Many Requests: The user has sent
too many requests ..."), searched by their bare codes. A code is an exact token that sentence
vectors blur: keyword search finds every one first, vectors alone miss some, hybrid finds each."""

from __future__ import annotations

import http
import shutil

import pytest

import latent

STATUSES = [s for s in http.HTTPStatus if s.description]


@pytest.fixture(scope="module")
def ix(sentence_index_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hybrid") / "idx"
    shutil.copytree(sentence_index_dir, directory)
    index = latent.open(directory)
    index.add([{"key": f"http{s.value}", "text": f"{s.value} {s.phrase}: {s.description}",
                "metadata": {"topic": "http", "class": s.value // 100}} for s in STATUSES])
    yield index
    index.close()


def rank(hits, key: str) -> int | None:
    return next((h.rank for h in hits if h.key == key), None)


def test_codes_by_mode(ix):
    assert len(STATUSES) >= 40
    ranks = {mode: [rank(ix.search(str(s.value), k=10, mode=mode), f"http{s.value}") for s in STATUSES]
             for mode in ("vector", "keyword", "hybrid")}
    assert ranks["keyword"] == [1] * len(STATUSES)  # the exact code
    assert all(r is not None and r <= 3 for r in ranks["hybrid"]), ranks["hybrid"]
    missed = [s.value for s, r in zip(STATUSES, ranks["vector"]) if r is None]
    assert missed, "minilm was expected to miss some bare codes"
    assert sum(r == 1 for r in ranks["vector"]) < sum(r == 1 for r in ranks["hybrid"])


def test_hybrid_keeps_the_meaning_of_words(ix):
    hits = ix.search("heavy rain and flooding", k=5, mode="hybrid")
    assert hits[0].metadata["topic"] == "weather"
    assert [h.key for h in ix.search("too many requests", k=1, mode="hybrid")] == ["http429"]


def test_filters_in_every_mode(ix):
    for mode in ("vector", "keyword", "hybrid"):
        hits = ix.search("404 not found", k=5, mode=mode, where="class = 5")
        assert hits and all(h.metadata["class"] == 5 for h in hits), mode
    assert [h.key for h in ix.search("404", k=3, mode="keyword", where="topic = http")] == ["http404"]
    assert ix.search("404", mode="keyword", where="topic = weather") == []
