"""Metadata filters: the guarantee that filters apply before the k nearest are chosen (k hits
whenever k items match, exactly the top k of the matching items), checked against a plain-Python
reference on real GloVe vectors. (The parser, bound values and booleans: tests/unit/test_where.py.)"""

from __future__ import annotations

import operator
import re
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import word_records
from latent.indexer import Index
from latent.search import parse_where, search, search_vectors
from latent.search import query as query_module
from latent.search.query import encode_query

K = 10
QUERIES = ("king", "water", "computer")


# -- a plain-Python reference of the documented semantics ----------------------------------------
MISSING = object()
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def get(meta, field):
    for part in field.split("."):
        if not isinstance(meta, dict) or part not in meta:
            return MISSING
        meta = meta[part]
    return meta


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def same(a, b):
    """Equal values of the same JSON type (numbers compare numerically)."""
    if is_num(a) and is_num(b):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def eq(field, *values):
    """`field = v` / `field in (...)`: the value, or an element of a list value, equals one of them."""
    def pred(m):
        v = get(m, field)
        items = [] if v is MISSING else v if isinstance(v, list) else [v]
        return any(same(x, y) for x in items for y in values)
    return pred


def ne(field, *values):
    """`!=` / `not in`: the negation of `=` / `in`, so items lacking the field match."""
    inner = eq(field, *values)
    return lambda m: not inner(m)


def cmp(field, op, value):
    """`<`-style: only values of the same type (number with number, text with text) compare."""
    def pred(m):
        v = get(m, field)
        if (is_num(v) and is_num(value)) or (isinstance(v, str) and isinstance(value, str)):
            return OPS[op](v, value)
        return False
    return pred


def AND(*ps):
    return lambda m: all(p(m) for p in ps)


def OR(*ps):
    return lambda m: any(p(m) for p in ps)


def NOT(p):
    return lambda m: not p(m)


# -- the flat index over ~3000 words with generated metadata --------------------------------------
COLOURS = ("red", "green", "blue", "x")


def generated_metadata(word: str, i: int) -> dict:
    meta = {
        "len": len(word), "first": word[0], "name": word, "i": i,
        "tags": [c for j, c in enumerate(COLOURS) if (i >> j) & 1],  # 0 to 4 colours, some lists empty
        "nested": {"x": i % 7, "deep": {"y": "even" if i % 2 == 0 else "odd"}},
    }
    if i % 10 == 7:
        meta["year"] = str(1950 + i % 70)  # a year held as text
    elif i % 10 != 3:  # i % 10 == 3: no year at all
        meta["year"] = 1950 + i % 70
    if i % 4 == 0:
        meta["score"] = i % 13 + 0.5
    return meta


@pytest.fixture(scope="module")
def flat(tmp_path_factory, glove_words):
    index = Index.create(tmp_path_factory.mktemp("filters") / "flat", encoder="glove", index_type="flat")
    index.add(word_records(glove_words[100:3100], generated_metadata))
    ids = index.store.ids()
    rows = index.store.fetch(ids.tolist())
    ref = SimpleNamespace(index=index, ids=ids, metas=[rows[int(i)]["metadata"] for i in ids],
                          keys=[rows[int(i)]["key"] for i in ids], vectors=index.store.vectors(ids, index.dim))
    yield ref
    index.close()


def reference(ref, pred, query: str, k: int = K):
    """(matching ids as a set, the top k of them by cosine: ids and scores)."""
    mask = np.array([pred(m) for m in ref.metas], dtype=bool)
    ids = ref.ids[mask]
    q = encode_query(ref.index, query)
    sims = ref.vectors[mask] @ q
    order = np.argsort(-sims, kind="stable")[:k]
    return set(ids.tolist()), ids[order].tolist(), sims[order]


CASES = [
    ("len = 5", eq("len", 5)),
    ("len == 5", eq("len", 5)),
    ("len = 5.0", eq("len", 5.0)),
    ("len != 5", ne("len", 5)),
    ("len < 4", cmp("len", "<", 4)),
    ("len <= 4", cmp("len", "<=", 4)),
    ("len > 9", cmp("len", ">", 9)),
    ("len >= 9", cmp("len", ">=", 9)),
    ("len > 100", cmp("len", ">", 100)),                                  # matches nothing
    ("year >= 2000", cmp("year", ">=", 2000)),                            # text years do not compare
    ("year < 1960", cmp("year", "<", 1960)),
    ("year = 1990", eq("year", 1990)),
    ('year = "1967"', eq("year", "1967")),                               # only the text years
    ("year = 1967", eq("year", 1967)),                                    # 1967 is only held as text
    ("year != 1990", ne("year", 1990)),                                   # includes items without year
    ('year > "2000"', cmp("year", ">", "2000")),                         # text comparison, text years only
    ("first in (a, b, c)", eq("first", "a", "b", "c")),
    ("first not in (a, b, c)", ne("first", "a", "b", "c")),
    ("first = 1", eq("first", 1)),                                        # a number never equals text "1"
    ('first = "1"', eq("first", "1")),
    ("tags = red", eq("tags", "red")),                                    # inside lists
    ("tags in (green, x)", eq("tags", "green", "x")),
    ("tags not in (red, blue)", ne("tags", "red", "blue")),               # includes empty lists
    ("tags != red", ne("tags", "red")),
    ("nested.x = 3", eq("nested.x", 3)),
    ("nested.x >= 5", cmp("nested.x", ">=", 5)),
    ("nested.deep.y = even and len > 6", AND(eq("nested.deep.y", "even"), cmp("len", ">", 6))),
    ("first = s or first = t", OR(eq("first", "s"), eq("first", "t"))),
    ("(first = s or first = t) and len <= 5", AND(OR(eq("first", "s"), eq("first", "t")), cmp("len", "<=", 5))),
    ("first = s or first = t and len <= 5", OR(eq("first", "s"), AND(eq("first", "t"), cmp("len", "<=", 5)))),
    ("not first = s", NOT(eq("first", "s"))),
    ("NOT (len < 5 OR len > 8)", NOT(OR(cmp("len", "<", 5), cmp("len", ">", 8)))),
    ("not tags = red and not tags = blue", AND(NOT(eq("tags", "red")), NOT(eq("tags", "blue")))),
    ('name >= "t" and name < "u"', AND(cmp("name", ">=", "t"), cmp("name", "<", "u"))),
    ("name > zebra", cmp("name", ">", "zebra")),
    ("name in (king, queen, paris, 1990)", eq("name", "king", "queen", "paris", 1990)),
    ("score > 6.5", cmp("score", ">", 6.5)),
    ("score <= 3.5 and year >= 1990", AND(cmp("score", "<=", 3.5), cmp("year", ">=", 1990))),
    ("i >= 100 and i < 105", AND(cmp("i", ">=", 100), cmp("i", "<", 105))),  # fewer than k match
    ("missing = 1", eq("missing", 1)),
    ("missing != 1", ne("missing", 1)),
    ("missing not in (a, 1)", ne("missing", "a", 1)),
    ("nested.nope = 1 or nested.x > -1", OR(eq("nested.nope", 1), cmp("nested.x", ">", -1))),
    ("(year >= 1990 and year < 2000) or (year = \"1957\" and not tags = x)",
     OR(AND(cmp("year", ">=", 1990), cmp("year", "<", 2000)), AND(eq("year", "1957"), NOT(eq("tags", "x"))))),
    # a missing field makes a comparison false, also under `not`; objects are not lists
    ("not year < 2000", NOT(cmp("year", "<", 2000))),
    ("year < 1980 or not year < 1980", OR(cmp("year", "<", 1980), NOT(cmp("year", "<", 1980)))),
    ("nested = 3", eq("nested", 3)),
]


@pytest.mark.parametrize("expr, pred", CASES, ids=[getattr(c, "values", c)[0] for c in CASES])
def test_filtered_search_is_exact_top_k_of_matching_items(flat, expr, pred):
    matching, _, _ = reference(flat, pred, QUERIES[0])
    # the store selects exactly the matching items
    assert set(flat.index.store.ids_where(*parse_where(expr)).tolist()) == matching
    for query in QUERIES:
        _, top_ids, top_scores = reference(flat, pred, query)
        hits = search(flat.index, query, k=K, where=expr)
        assert len(hits) == min(K, len(matching))
        assert [h.id for h in hits] == top_ids
        np.testing.assert_allclose([h.score for h in hits], top_scores, atol=1e-5)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(pred(h.metadata) for h in hits)


def test_sanity_of_generated_metadata(flat):
    """The cases above cover what they claim: missing and text years, empty lists, few and no matches."""
    years = [m.get("year", MISSING) for m in flat.metas]
    assert sum(y is MISSING for y in years) == 300
    assert sum(isinstance(y, str) for y in years) == 300
    assert sum(m["tags"] == [] for m in flat.metas) > 100
    counts = {expr: len(reference(flat, pred, "king")[0]) for expr, pred in CASES[:-3]}
    assert counts["len > 100"] == 0 and counts["missing = 1"] == 0
    assert 0 < counts["i >= 100 and i < 105"] < K
    assert 0 < counts['year = "1967"'] < counts["year != 1990"] and counts["year = 1967"] == 0
    assert counts["year = 1990"] > 0
    assert counts["missing != 1"] == len(flat.ids)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_k_and_batched_queries(flat, k):
    expr, pred = "tags = blue and len >= 6", AND(eq("tags", "blue"), cmp("len", ">=", 6))
    queries = ["music", "river", "war", "science"]
    vectors = np.stack([encode_query(flat.index, q) for q in queries])
    batched = search_vectors(flat.index, vectors, k=k, where=expr)
    assert len(batched) == len(queries)
    for query, hits in zip(queries, batched):
        _, top_ids, _ = reference(flat, pred, query, k=k)
        assert [h.id for h in hits] == top_ids and len(hits) == k
        assert [h.id for h in search(flat.index, query, k=k, where=expr)] == top_ids


def test_empty_where_means_no_filter(flat):
    plain = [h.id for h in search(flat.index, "king", k=K)]
    assert [h.id for h in search(flat.index, "king", k=K, where="  ")] == plain
    assert [h.id for h in search(flat.index, "king", k=K, where=None)] == plain
    assert plain == reference(flat, lambda m: True, "king")[1]


# -- approximate indexes: k hits whenever k items match -----------------------------------------
N_APPROX = 44_000  # > 2 * EXACT_SCAN_MAX, so a 50% filter goes through FAISS with an id selector


def approx_metadata(word: str, i: int) -> dict:
    meta = {"half": i % 2, "mid": "yes" if i % 100 == 0 else "no"}
    if i % 8800 == 17:
        meta["sel"] = "yes"  # 5 items
    return meta


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_approximate_indexes_return_k_filtered_hits(make_word_index, index_type, monkeypatch):
    index = make_word_index(n=N_APPROX, index_type=index_type, metadata=approx_metadata)
    factory = index.vectors.factory
    assert factory == "HNSW32" if index_type == "hnsw" else re.fullmatch(r"IVF\d+,Flat", factory), factory
    assert not index.vectors.exact

    ids = index.store.ids()
    rows = index.store.fetch(ids.tolist())
    metas = [rows[int(i)]["metadata"] for i in ids]
    vectors = index.store.vectors(ids, index.dim)
    cases = {
        "sel = yes": eq("sel", "yes"),
        "mid = yes": eq("mid", "yes"),
        "half = 0": eq("half", 0),
        "half != 0": ne("half", 0),
    }
    matching = {expr: ids[np.array([p(m) for m in metas])] for expr, p in cases.items()}
    assert len(matching["sel = yes"]) == 5 and len(matching["mid = yes"]) == 440
    assert len(matching["half = 0"]) > query_module.EXACT_SCAN_MAX

    def check(expr, query, k, exact):
        allowed = matching[expr]
        q = encode_query(index, query)
        sims = vectors[np.isin(ids, allowed)] @ q
        truth = allowed[np.argsort(-sims, kind="stable")[:k]].tolist()
        hits = search(index, query, k=k, where=expr)
        assert len(hits) == min(k, len(allowed)), (expr, query, k)
        assert set(h.id for h in hits) <= set(allowed.tolist())
        assert all(cases[expr](h.metadata) for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        if exact:
            assert [h.id for h in hits] == truth, (expr, query)
        return len(set(h.id for h in hits) & set(truth)) / len(truth)

    queries = ("king", "water", "music", "war", "science", "apple")
    for forced in (False, True):
        if forced:  # no exact-scan shortcut: every filter goes through FAISS's id selector (and its fallback)
            monkeypatch.setattr(query_module, "EXACT_SCAN_MAX", 0)
        for query in queries:
            for k in (5, K):
                check("sel = yes", query, k, exact=True)  # very selective: exact in both paths
            check("mid = yes", query, K, exact=not forced)
        recalls = [check(expr, q, k, exact=False) for expr in ("half = 0", "half != 0")
                   for q in queries for k in (K, 50)]
        assert np.mean(recalls) >= 0.9, recalls
