"""The engine on the tests' `fake` encoder (no model): round trips that survive reopening,
upserts and deletes, filters applied before the k nearest are chosen (against a numpy
reference), approximate index types against flat, a second handle catching up, check and rebuild."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import FakeEncoder
from latent.indexer import Index, Record
from latent.search import search, search_vectors, similar

FAKE = FakeEncoder()
WORDS = [f"w{i}" for i in range(300)]


def corpus(n: int, seed: int = 0) -> list[Record]:
    """n texts of 3-6 words from a 300-word vocabulary, keyed d0..., with numeric and text metadata."""
    rng = np.random.default_rng(seed)
    return [Record(text=" ".join(rng.choice(WORDS, size=int(rng.integers(3, 7)))), key=f"d{i}",
                   metadata={"i": i, "mod": i % 7, "tag": ["red", "green", "blue"][i % 3],
                             "nested": {"even": i % 2 == 0}})
            for i in range(n)]


def keys(hits) -> list[str]:
    return [h.key for h in hits]


@pytest.fixture
def docs():
    return corpus(600)


@pytest.fixture
def index(tmp_path, docs):
    ix = Index.create(tmp_path / "idx", encoder="fake", index_type="flat")
    ix.add(docs)
    yield ix
    ix.close()


def brute_force(docs, query: str, k: int, keep=lambda meta: True) -> list[str]:
    """The exact top k of the items whose metadata passes `keep`, by cosine to the query."""
    chosen = [d for d in docs if keep(d.metadata)]
    scores = FAKE.encode([d.text for d in chosen]) @ FAKE.encode([query])[0]
    order = np.argsort(-scores, kind="stable")[:k]
    return [chosen[i].key for i in order]


def test_hits_are_ranked_and_match_a_brute_force_scan(index, docs):
    for query in ("w1 w2 w3", "w100", "w299 w5"):
        hits = search(index, query, k=10)
        assert [h.rank for h in hits] == list(range(1, 11))
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        assert keys(hits) == brute_force(docs, query, 10)
        by_key = {d.key: d for d in docs}
        assert all(h.text == by_key[h.key].text and h.metadata == by_key[h.key].metadata for h in hits)


def test_round_trip_survives_reopen(index, docs):
    before = search(index, "w7 w8", k=20)
    directory = index.directory
    index.close()
    with Index.open(directory) as again:
        assert again.count() == 600 and again.encoder_name == "fake"
        after = search(again, "w7 w8", k=20)
    assert [(h.key, round(h.score, 6)) for h in after] == [(h.key, round(h.score, 6)) for h in before]


def test_upsert_and_delete_persist(index):
    report = index.add([Record(text="brand new", key="d5", metadata={"i": 5, "new": True})])
    assert (report.added, report.replaced) == (0, 1) and index.count() == 600
    top = search(index, "brand new", k=1)[0]
    assert (top.key, top.metadata) == ("d5", {"i": 5, "new": True})
    assert index.delete(["d1", "d2", "nope"]) == (2, ["nope"])
    assert index.count() == 598
    everything = keys(search(index, "w1", k=600))
    assert len(everything) == 598 == len(set(everything)) and not {"d1", "d2"} & set(everything)
    directory = index.directory
    index.close()
    with Index.open(directory) as again:
        assert again.count() == 598 and again.check()["ok"]
        assert not {"d1", "d2"} & set(keys(search(again, "w1", k=600)))
        assert search(again, "brand new", k=1)[0].key == "d5"


@pytest.mark.parametrize("where, keep", [
    ("mod = 3", lambda m: m["mod"] == 3),
    ("i < 20", lambda m: m["i"] < 20),
    ("tag in (red, blue) and i >= 300", lambda m: m["tag"] in ("red", "blue") and m["i"] >= 300),
    ("not tag = green or mod = 0", lambda m: m["tag"] != "green" or m["mod"] == 0),
    ("nested.even = true", lambda m: m["nested"]["even"] is True),
    ("i = 17", lambda m: m["i"] == 17),
    ("missing = 1", lambda m: False),
    ("missing != 1", lambda m: True),  # != matches items that lack the field
])
@pytest.mark.parametrize("index_type", ["flat", "HNSW16"])
def test_filters_apply_before_the_k_nearest_are_chosen(tmp_path, docs, where, keep, index_type):
    with Index.create(tmp_path / "idx", encoder="fake", index_type=index_type) as ix:
        ix.add(docs)
        for query in ("w3 w4", "w250"):
            hits = search(ix, query, k=10, where=where)
            assert keys(hits) == brute_force(docs, query, 10, keep)
            assert all(keep(h.metadata) for h in hits)


@pytest.mark.parametrize("index_type", ["flat", "HNSW16"])
def test_a_filter_on_a_field_no_item_has_can_be_explained(tmp_path, docs, index_type):
    """Nothing can match a field that no item has: a valid query with no hits, which the index
    can explain by naming the field and the fields items have (the CLI says it)."""
    with Index.create(tmp_path / "idx", encoder="fake", index_type=index_type) as ix:
        ix.add(docs)
        assert search(ix, "w3", k=10, where="missing = 1") == []
        assert re.fullmatch(r"no item of idx has the field 'missing'; its items have: .*\bmod\b.*",
                            ix.explain_no_match("missing = 1"))
        assert "'nested.odd'" in ix.explain_no_match("nested.odd = true")
        assert ix.explain_no_match("mod = 99") is None  # a field items have: nothing to explain


@pytest.mark.parametrize("spec", ["HNSW16", "IVF8,Flat", "auto"])
def test_index_types_match_flat(tmp_path, spec):
    docs = corpus(2000, seed=1)
    with Index.create(tmp_path / "flat", encoder="fake", index_type="flat") as flat, \
            Index.create(tmp_path / "other", encoder="fake", index_type=spec) as other:
        flat.add(docs)
        other.add(docs)
        queries = FAKE.encode([d.text for d in docs[:200]])
        exact = search_vectors(flat, queries, k=10)
        approx = search_vectors(other, queries, k=10)
        if spec.startswith("IVF"):
            assert other.vectors.factory == spec, "2,000 vectors are enough to train"
    recall = np.mean([len(set(keys(a)) & set(keys(e))) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, f"{spec}: recall@10 {recall:.3f}"


def test_similar_leaves_the_item_out(index, docs):
    hits = similar(index, key="d10", k=5)
    assert "d10" not in keys(hits) and len(hits) == 5
    assert keys(hits) == [k for k in brute_force(docs, docs[10].text, 6) if k != "d10"][:5]


def test_a_second_handle_sees_the_first_ones_writes(index):
    with Index.open(index.directory) as reader:
        assert reader.count() == 600
        index.add([Record(text="zebra crossing", key="late")])
        index.delete(["d0"])
        assert search(reader, "zebra crossing", k=1)[0].key == "late"
        assert "d0" not in keys(search(reader, "w1", k=600))


def test_vectors_file_is_derived_and_rebuilt(index):
    before = keys(search(index, "w42", k=10))
    (index.directory / "vectors.faiss").unlink()
    directory = index.directory
    index.close()
    with Index.open(directory) as again:
        assert keys(search(again, "w42", k=10)) == before
        assert again.rebuild() == []
        assert again.check()["ok"]
        assert keys(search(again, "w42", k=10)) == before
