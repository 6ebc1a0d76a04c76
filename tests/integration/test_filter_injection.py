"""Hostile metadata and hostile --where text: filters stay data, never SQL.

Hypothesis generates items (keys and metadata full of quotes, backslashes, SQL fragments,
newlines, RTL and combining marks, emoji, JSON-looking text, numbers at the edges of 64-bit
and double precision, booleans, nulls, lists, nested objects) and filter expressions (an AST of
comparisons, `in` lists, and/or/not and parentheses, rendered with quoted and escaped literals,
odd spacing and keyword case). A filtered search with k = the item count must return exactly
the items a plain-Python reading of the semantics in indexer/filters.py selects, ranked by score,
and leave the database as it was: the same schema (sqlite_master), the same item count, and
`PRAGMA integrity_check` ok. Field names outside `^[A-Za-z_][A-Za-z0-9_.]*$` are refused.
"""

from __future__ import annotations

import itertools
import operator
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from latent.indexer import FilterError, Index, read_inputs
from latent.indexer.errors import InputError
from latent.search import parse_where, search_vectors
from latent.indexer.filters import _tokenize

DIM = 50  # GloVe's dimension; add_vectors never encodes, so the word vectors are not loaded
SETTINGS = {"deadline": None, "database": None, "derandomize": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]}
FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
NOT_FIELDS = {"and", "or", "not", "in", "true", "false"}  # words the parser reads as keywords or booleans
RULE = "field names are letters, digits, _ and dots, starting with a letter or _"

# -- generated data ------------------------------------------------------------------------------
HOSTILE = [
    "'", '"', "\\", "\\'", '\\"', "\\\\", "x' OR 1=1 --", "') OR 1=1 --", "'; DROP TABLE items; --",
    '" OR ""="', "1; DELETE FROM items", "a\"; DROP TABLE items; --", "%", "_", "*", "?", "?1", ":name",
    "\n", "a\nb", "\r\n", "\t", " ", "", "\\n", "\\\n", '{"a":1}', "[1, 2]", "$.x", '$."a"', "$[0]",
    "null", "NULL", "true", "false", "1", "1.0", "-0", "1e3", "and", "OR", "not in", "(", ")", ",", "=",
    "!=", "<>", "é", "e\u0301", "\u202eevil\u202c", "\u200f", "שלום", "مرحبا", "😀", "👩\u200d👩\u200d👧",
    "\ufeff", "\u2028", "\x7f", "\x01", "İ", "ß", "\u00a0", "名前", "٣", "５", "\U0010ffff",
]
# No NUL (U+0000) here: SQLite 3.40's JSON functions end stored text at it, see the NUL tests below.
CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
# text that looks numeric but, bare, reads as text: non-ASCII digits, signs, inf, hex
NUMERIC_TEXT = ["٣", "５", "١٠", "٣.٥", "-٣", "²", "1e5x", "-", "+1", "0x10", "1_000", "1.2.3", "1-2", "1e", ".",
                "inf", "-inf", "NaN", "Infinity", "1/2", "10:30", "2020-01-01"]
TEXT = st.one_of(
    st.sampled_from(HOSTILE),
    st.sampled_from(NUMERIC_TEXT),
    st.text(CHARS, max_size=6),
    st.lists(st.sampled_from(HOSTILE + ["a", "b", "Z", "0", "9"]), min_size=2, max_size=4).map("".join),
)
INT_EDGES = [0, 1, -1, 2**31, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63), 2**63 - 2]
INTS = st.one_of(st.integers(-3, 3), st.sampled_from(INT_EDGES), st.integers(-(2**63), 2**63 - 1))
FLOATS = st.one_of(st.sampled_from([0.5, -0.0, 1.0, 2.0**53, 9.223372036854776e18, 5e-324, 1.7976931348623157e308]),
                   st.floats(allow_nan=False, allow_infinity=False))
SCALARS = st.one_of(TEXT, INTS, FLOATS, st.booleans(), st.none())
FIRST_SEGMENTS = ["a", "b", "c_1", "_", "Z9"]                   # can start a field name
SEGMENTS = FIRST_SEGMENTS + ["0", "and", "true", "x.y"]         # later segments; "x.y" is a literal dotted key
UNFILTERABLE = ["a-b", "名前", "$x", "a b", "'", "", "1a", "a;b"]  # stored, but no filter can name them
KEYS = st.sampled_from(SEGMENTS + UNFILTERABLE)
ITEM_KEYS = st.one_of(st.sampled_from([h for h in HOSTILE if h]), st.text(CHARS, min_size=1, max_size=8))  # no NUL


@st.composite
def item_lists(draw, min_size: int, max_size: int, palette_size=(2, 8)):
    """[(key, metadata)]: the metadata's values come from a small generated palette, so that items
    share values (equality selects several, comparisons meet equal values); fields a, b and c_1
    (a nested object, often) are common, and other keys (some unfilterable) come and go, some
    replacing a or b: in some items these are missing."""
    palette = draw(st.lists(SCALARS, min_size=palette_size[0], max_size=palette_size[1]), label="palette")
    scalar = st.sampled_from(palette)
    json = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(KEYS, inner, max_size=3)), max_leaves=4)
    common = st.fixed_dictionaries({"a": st.one_of(scalar, scalar, st.lists(scalar, max_size=3)), "b": scalar},
                                   optional={"c_1": st.one_of(st.fixed_dictionaries({"a": scalar}, optional={
                                       "b": json, "x.y": scalar}), json)})
    metadata = st.builds(lambda common, extra, drop: {k: v for k, v in {**common, **extra}.items() if k not in drop},
                         common, st.dictionaries(KEYS, json, max_size=2), st.sets(st.sampled_from(["a", "b"])))
    keys = draw(st.lists(ITEM_KEYS, min_size=min_size, max_size=max_size, unique=True), label="keys")
    metas = draw(st.lists(metadata, min_size=len(keys), max_size=len(keys)), label="metadata")
    return list(zip(keys, metas))



# -- the plain-Python reference of the semantics documented in indexer/filters.py -----------------
MISSING = object()
ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def get(meta, field: str):
    for part in field.split("."):
        if not isinstance(meta, dict) or part not in meta:
            return MISSING
        meta = meta[part]
    return meta


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def same(a, b) -> bool:
    """Equal values of the same JSON type: numbers numerically (1 == 1.0), text, booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_num(a) and is_num(b):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def member(meta, field, values) -> bool:
    """`=` / `in`: the value, or an element of a list value, equals one of `values`."""
    v = get(meta, field)
    items = [] if v is MISSING else v if isinstance(v, list) else [v]
    return any(same(x, y) for x in items for y in values)


def ordered(meta, field, op, value) -> bool:
    """`<`-style: only a number with a number or a text with a text compares (by code point)."""
    v = get(meta, field)
    if (is_num(v) and is_num(value)) or (isinstance(v, str) and isinstance(value, str)):
        return ORDER[op](v, value)
    return False


def holds(node, meta) -> bool:
    kind = node[0]
    if kind == "cmp":
        _, field, op, value = node
        if op in ("=", "=="):
            return member(meta, field, [value])
        if op == "!=":
            return not member(meta, field, [value])
        return ordered(meta, field, op, value)
    if kind == "in":
        _, field, values, negate = node
        return member(meta, field, values) != negate
    if kind == "and":
        return all(holds(n, meta) for n in node[1])
    if kind == "or":
        return any(holds(n, meta) for n in node[1])
    if kind == "not":
        return not holds(node[1], meta)
    return holds(node[1], meta)  # "paren"


# -- filter expressions: an AST, rendered to text ------------------------------------------------
def walk(meta, prefix=()):
    for key, value in meta.items():
        yield prefix + (key,), value
        if isinstance(value, dict):
            yield from walk(value, prefix + (key,))


def filterable(name: str) -> bool:
    return bool(FIELD.fullmatch(name)) and "" not in name.split(".") and name.lower() not in NOT_FIELDS


def literals(value):
    """The values a filter can spell (no null, no containers) found in a metadata value."""
    if isinstance(value, list):
        return [x for v in value for x in literals(v)]
    return [] if value is None or isinstance(value, dict) else [value]


def field_names(metas):
    names = {".".join(p) for m in metas for p, _ in walk(m)}
    return sorted(n for n in names if filterable(n))


def value_pool(metas):
    pool = [x for m in metas for _, v in walk(m) for x in literals(v)]
    return list({(type(v).__name__, repr(v)): v for v in pool}.values())


OPS = ["=", "==", "!=", "<", "<=", ">", ">="]


def filter_asts(metas) -> st.SearchStrategy:
    """Filter ASTs whose fields and values mostly come from the items (a field's own values most
    often), so that they select some of the items and the comparisons meet their boundaries."""
    own: dict[str, list] = {}  # field name -> its values, as often as items hold them
    occurrences = []  # field names, as often as items hold them: common fields are drawn more often
    for meta in metas:
        for path, value in walk(meta):
            if filterable(".".join(path)):
                own.setdefault(".".join(path), []).extend(literals(value))
                occurrences.append(".".join(path))
    pool = value_pool(metas)
    made_up = st.builds(lambda first, rest: ".".join([first, *rest]), st.sampled_from(FIRST_SEGMENTS),
                        st.lists(st.sampled_from(SEGMENTS[:-1]), max_size=2))
    field = st.one_of(*[st.sampled_from(occurrences)] * 3, made_up) if own else made_up
    fresh = st.one_of(TEXT, INTS, FLOATS, st.booleans())

    def value(name):
        options = [st.sampled_from(own[name])] * 3 if own.get(name) else []
        return st.one_of(*options, *([st.sampled_from(pool)] if pool else []), fresh, st.sampled_from(NUMERIC_TEXT))

    comparison = field.flatmap(lambda f: st.builds(
        lambda op, v: ("cmp", f, "=" if isinstance(v, bool) and op in ORDER else op, v),
        st.sampled_from(OPS), value(f)))
    membership = field.flatmap(lambda f: st.builds(
        lambda vs, neg: ("in", f, vs, neg), st.lists(value(f), min_size=1, max_size=4), st.booleans()))
    return st.recursive(st.one_of(comparison, membership), lambda inner: st.one_of(
        st.builds(lambda xs: ("and", xs), st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda xs: ("or", xs), st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda x: ("not", x), inner),
        st.builds(lambda x: ("paren", x), inner),
    ), max_leaves=6)


NUMBER = re.compile(r"-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?")


def reads_as_word(text: str) -> bool:
    """The text reads back as itself without quotes, by the grammar (not by asking the parser): no
    whitespace, ( ) = ! < > , or quotes, not true/false, and no start that reads as a number
    (ASCII digits, not followed by a letter, digit, _ . : / or -)."""
    if not text or re.search(r"[\s()=!<>,\"']", text) or text.lower() in ("true", "false"):
        return False
    return not any(NUMBER.fullmatch(text[:end]) and not re.match(r"[\w.:/-]", text[end:end + 1])
                   for end in range(1, len(text) + 1))


@st.composite
def literal(draw, value):
    """(token kind, text) of a value: numbers as Python writes them, text quoted and escaped, or bare."""
    if isinstance(value, bool):
        return "word", draw(st.sampled_from(["true", "TRUE", "True"] if value else ["false", "FALSE", "False"]))
    if is_num(value):
        return "num", repr(value)
    style = draw(st.sampled_from(["'", '"', "bare", "bare", "escape-all"]))
    if style == "bare" and reads_as_word(value):
        return "word", value
    quote = draw(st.sampled_from(["'", '"'])) if style in ("bare", "escape-all") else style
    if style == "escape-all":  # a backslash makes any character literal, newlines included
        return "str", quote + "".join("\\" + c for c in value) + quote
    return "str", quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


@st.composite
def tokens_of(draw, node, parent=None):
    """(kind, text) tokens of an AST, with parentheses only where precedence needs them
    (and binds tighter than or, not tighter than both) or where the AST asks for them."""
    kind = node[0]

    def kw(word):
        return "kw", draw(st.sampled_from([word, word.upper(), word.capitalize()]))

    if kind == "cmp":
        return [("word", node[1]), ("op", node[2]), draw(literal(node[3]))]
    if kind == "in":
        out = [("word", node[1])] + ([kw("not")] if node[3] else []) + [kw("in"), ("punct", "(")]
        for i, v in enumerate(node[2]):
            out += ([("punct", ",")] if i else []) + [draw(literal(v))]
        return out + [("punct", ")")]
    if kind == "paren":
        return [("punct", "(")] + draw(tokens_of(node[1])) + [("punct", ")")]
    if kind == "not":
        return [kw("not")] + draw(tokens_of(node[1], "not"))
    out = []
    for i, child in enumerate(node[1]):
        out += ([kw(kind)] if i else []) + draw(tokens_of(child, kind))
    needs = parent == "not" or (parent == "and" and kind == "or")
    return [("punct", "(")] + out + [("punct", ")")] if needs else out


@st.composite
def rendered(draw, node) -> str:
    """The expression text: tokens joined by odd whitespace, or none where the tokenizer allows it."""
    tokens = draw(tokens_of(node))
    text = draw(st.sampled_from(["", " ", "\n"]))
    for i, (kind, tok) in enumerate(tokens):
        if i:
            glued = kind in ("op", "punct", "str") or tokens[i - 1][0] in ("op", "punct", "str")
            text += draw(st.sampled_from(([""] if glued else []) + [" ", "  ", "\t", "\n", "\u00a0", "\u3000"]))
        text += tok
    return text + draw(st.sampled_from(["", " ", "\r\n"]))


# -- the index and its checks ------------------------------------------------------------------
def schema(index) -> list:
    return index.store.db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()


def assert_untouched(index, master, count):
    assert schema(index) == master
    assert index.count() == count
    assert index.store.integrity_check() == ["ok"]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def check_filter(index, expr: str, ast, keys, metas, vectors, query):
    """k = item count: the hits are exactly the reference's matches, ranked by exact cosine."""
    expected = {k for k, m in zip(keys, metas) if holds(ast, m)}
    hits = search_vectors(index, query[None, :], k=len(keys), where=expr)[0]
    got = [h.key for h in hits]
    assert len(got) == len(set(got)) and set(got) == expected, (expr, ast)
    truth = dict(zip(keys, (unit(vectors) @ unit(query)).tolist()))
    scores = [h.score for h in hits]
    np.testing.assert_allclose(scores, [truth[k] for k in got], atol=1e-5)
    assert all(a >= b - 1e-6 for a, b in itertools.pairwise(scores)), scores
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    by_key = dict(zip(keys, metas))
    assert all(h.metadata == by_key[h.key] for h in hits)
    return len(expected)


# -- 1. generated items and filters --------------------------------------------------------------
def test_generated_items_and_filters_match_the_reference(tmp_path):
    """Every example writes new generated items into one index (the old ones deleted), then checks
    a few generated filters against the reference, and that the store is left as it was."""
    index = Index.create(tmp_path / "idx", encoder="glove", index_type="flat")
    index.add_vectors(["seed"], np.ones((1, DIM), dtype=np.float32), metadata=[{"a": 1}])
    master = schema(index)
    current = ["seed"]
    stats = {"examples": 0, "filters": 0, "nonempty": 0, "partial": 0}

    @settings(max_examples=80, **SETTINGS)
    @given(items=item_lists(3, 10), seed=st.integers(0, 2**16), data=st.data())
    def check(items, seed, data):
        keys = [k for k, _ in items]
        metas = [m for _, m in items]
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((len(keys), DIM)).astype(np.float32)
        index.delete(current)
        index.add_vectors(keys, vectors, metadata=metas)
        current[:] = keys
        assert index.count() == len(keys)
        stored = index.store.fetch(index.store.ids().tolist())
        assert {r["key"]: r["metadata"] for r in stored.values()} == dict(zip(keys, metas))  # kept exactly
        assert schema(index) == master
        asts = filter_asts(metas)
        query = rng.standard_normal(DIM).astype(np.float32)
        for _ in range(data.draw(st.integers(1, 4), label="filters")):
            ast = data.draw(asts, label="ast")
            expr = data.draw(rendered(ast), label="where")
            n = check_filter(index, expr, ast, keys, metas, vectors, query)
            stats["filters"] += 1
            stats["nonempty"] += n > 0
            stats["partial"] += 0 < n < len(keys)
        assert_untouched(index, master, len(keys))
        stats["examples"] += 1

    check()
    index.close()
    # the generator is not degenerate: many filters select some but not all of the items
    assert stats["partial"] >= stats["filters"] // 8, stats


# -- 2. one larger index, many filters -----------------------------------------------------------
@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """120 generated items, drawn once (derandomized), in one flat index for the whole test."""
    drawn = []

    @settings(max_examples=3, phases=[Phase.generate], **SETTINGS)
    @given(item_lists(120, 120, palette_size=(12, 20)))
    def collect(items):  # the first example hypothesis makes is the simplest: keep the last one
        drawn[:] = items

    collect()
    keys = [k for k, _ in drawn]
    metas = [m for _, m in drawn]
    vectors = np.random.default_rng(7).standard_normal((len(keys), DIM)).astype(np.float32)
    index = Index.create(tmp_path_factory.mktemp("injection") / "pool", encoder="glove", index_type="flat")
    index.add_vectors(keys, vectors, metadata=metas)
    yield index, keys, metas, vectors
    index.close()


@pytest.mark.parametrize("indexed", [False, True], ids=["scanned", "indexed"])
def test_many_filters_on_one_index_match_the_reference(pool, indexed):
    """The same answers whether SQLite scans the items or reads an expression index of each
    field (latent index-field): the indexed run puts an index on every field the items have."""
    index, keys, metas, vectors = pool
    for field in field_names(metas):
        index.index_field(field, drop=not indexed)
    assert len(index.indexed_fields()) == (len(field_names(metas)) if indexed else 0)
    master, count = schema(index), index.count()
    asts = filter_asts(metas)
    queries = np.random.default_rng(8).standard_normal((4, DIM)).astype(np.float32)
    sizes, plans = [], []

    @settings(max_examples=250 if not indexed else 120, **SETTINGS)
    @given(ast=asts, data=st.data(), q=st.integers(0, len(queries) - 1))
    def check(ast, data, q):
        expr = data.draw(rendered(ast), label="where")
        sizes.append(check_filter(index, expr, ast, keys, metas, vectors, queries[q]))
        plans.append(any("USING INDEX field:" in step for step in index.store.query_plan(*parse_where(expr))))
        assert_untouched(index, master, count)

    check()
    assert len(field_names(metas)) >= 8 and len(value_pool(metas)) >= 10
    assert sum(0 < n < len(keys) for n in sizes) >= len(sizes) // 6, sizes
    assert (sum(plans) >= len(plans) // 4) if indexed else not any(plans), (sum(plans), len(plans))


# -- 3. field names --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a-b", "1a", "1e", "a;b", "名前", "$x", "a/b", "a\x00b", "a.b-c", "é", "ａ",
                                  "a\u200bb", "a٣", "İ", "a[0]", "a*", "%", "a.b.$c", "_.-", "-a", "a+b", "a|b"])
def test_bad_field_names_are_refused_by_name(name):
    for expr in (f"{name} = 1", f"x = 1 and {name} in (1, 2)", f"not ({name} < 'a')", f"{name} not in (x)"):
        with pytest.raises(FilterError) as info:
            parse_where(expr)
        message = str(info.value)
        assert f"bad field name {name!r}" in message and RULE in message, message
        assert re.search(rf"position {expr.index(name) + 1}(?!\d)", message), message


@pytest.mark.parametrize("expr", ["a b = 1", 'a"b = 1', "a'b = 1", 'a"b" = 1', "a(b) = 1", "a,b = 1", "a=b = 1",
                                  "a!b = 1", "a<b = 1", "1 = 1", "1.5 = 1", "true = 1", "FALSE = 1", "in = 1",
                                  "and = 1", "'a' = 1", '"a" = 1', "= 1", "() = 1"])
def test_names_that_are_not_one_word_are_filter_errors(expr):
    with pytest.raises(FilterError):
        parse_where(expr)


@pytest.mark.parametrize("name", ["a..b", "a.", "a.b..c", "a.b."])
def test_empty_segments_are_still_refused(name):
    with pytest.raises(FilterError, match=r"bad field name .* position 1 \(dots separate nested names"):
        parse_where(f"{name} = 1")


@pytest.mark.parametrize("name", ["_", "_1", "A", "a.0", "a.and", "a.true", "A_b.C_d.e9", "x" * 200])
def test_good_field_names_are_accepted(name):
    sql, params = parse_where(f"{name} = 1")
    assert f"""json_extract(metadata, '{"$" + "".join(f'."{p}"' for p in name.split("."))}')""" in sql
    assert params == [1, 1]


# one word token: none of the characters that end a word (whitespace, ( ) = ! < > , " ')
WORD_CHARS = st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="()=!<>,\"'")


@settings(max_examples=300, **SETTINGS)
@given(name=st.one_of(st.text(WORD_CHARS, min_size=1, max_size=8),
                      st.text(st.sampled_from("aZ_09.-$;/\\[]{}*+&|~`^%@#?:名é"), min_size=1, max_size=6)))
def test_generated_field_names_are_refused_unless_they_follow_the_rule(name):
    if any(c.isspace() for c in name):
        return
    one_word = [t.kind for t in _tokenize(name)] == ["word", "end"] and name.lower() not in NOT_FIELDS
    try:
        parse_where(f"{name} = 1")
    except FilterError as e:
        message = str(e)
        if not one_word:  # a keyword, a number, or a number and more (0;): not a field name at all
            assert "expected a field name" in message, message
        elif FIELD.fullmatch(name):
            assert f"bad field name {name!r} at position 1 (dots separate" in message, message
        else:
            assert f"bad field name {name!r} at position 1: {RULE}" in message, message
    else:
        assert filterable(name), name


# -- 4. literals at the edges -----------------------------------------------------------------------
@pytest.fixture
def edges(tmp_path):
    metas = [{"v": 3}, {"v": "٣"}, {"v": "a\nb"}, {"v": 2**63 - 1}, {"v": 1e20}, {"v": "x"}, {"v": True},
             {"v": ["a'b", 'c"d', "e\\f"]}, {"v": "\U0001F600"}, {"v": "a"}]
    index = Index.create(tmp_path / "edges", encoder="glove", index_type="flat")
    keys = [f"k{i}" for i in range(len(metas))]
    index.add_vectors(keys, np.random.default_rng(0).standard_normal((len(metas), DIM)).astype(np.float32),
                      metadata=metas)
    yield index, metas
    index.close()


def matched(index, expr):
    return sorted(int(h.key[1:]) for h in search_vectors(index, np.ones((1, DIM), np.float32), k=50, where=expr)[0])


@pytest.mark.parametrize("expr, expected", [
    ("v = ٣", [1]),                              # a non-ASCII digit is text, not the number 3
    ("v = ５", []),
    ("v = 3", [0]),
    ('v = "a\\\nb"', [2]),                        # backslash-newline: a literal newline
    ('v = "a\nb"', [2]),
    ("v = 'a\\\\\nb'", []),                      # an escaped backslash, then a newline
    ("v = 9223372036854775807", [3]),
    ("v >= 9223372036854775807", [3, 4]),
    ("v = 1e20", [4]),
    ("v = 100000000000000000000.0", [4]),
    ('v = "a\\\'b"', [7]),
    ("v in ('c\"d', \"e\\\\f\")", [7]),
    ("v = '\\x'", [5]),                            # \x is x
    ("v > '\\U0001F5FF'", [1, 2, 5, 8, 9]),       # 'U0001F5FF': no escape sequences
    ("v > 'z'", [1, 8]),                           # code point order: Arabic and emoji after z
    ("v = '\U0001F600'", [8]),
    ("v != true", [0, 1, 2, 3, 4, 5, 7, 8, 9]),
])
def test_literals(edges, expr, expected):
    index, _ = edges
    assert matched(index, expr) == expected


@pytest.mark.parametrize("expr, message", [
    ("v = 9223372036854775808", "does not fit in 64 bits"),
    ("v < -9223372036854775809", "does not fit in 64 bits"),
    ("v in (1, 99999999999999999999999)", "does not fit in 64 bits"),
    ('v = "a\x00b"', "NUL"),
    ("v = a\x00b", "NUL"),
    ("v in (x, 'y\x00')", "NUL"),
    ("v = '\udcff'", "not valid Unicode"),      # an undecodable command-line byte
    ("v = \udcff", "not valid Unicode"),
    ("v < true", "true/false can only be compared with = or !="),
    ("v >= FALSE", "true/false can only be compared with = or !="),
])
def test_unmatchable_literals_are_filter_errors(edges, expr, message):
    index, _ = edges
    master, count = schema(index), index.count()
    with pytest.raises(FilterError, match=message):
        matched(index, expr)
    assert_untouched(index, master, count)


def test_nul_in_metadata_or_keys_is_refused(tmp_path):
    """SQLite's JSON functions end text at U+0000 (stored 'x\\x00y' would read as 'x' in filters, and
    a key 'k\\x00z' would be looked up as 'k'): NUL is refused in metadata and keys, nothing is stored."""
    index = Index.create(tmp_path / "nul", encoder="glove", index_type="flat")
    try:
        index.add_vectors(["k9"], np.ones((1, DIM), np.float32), metadata=[{"v": "x"}])
        for keys, meta in ((["k0"], {"v": "x\x00y"}), (["k1"], {"a\x00b": 1}), (["k2"], {"v": ["\x00"]}),
                           (["k\x00z"], {"v": "y"})):
            with pytest.raises(InputError, match="NUL"):
                index.add_vectors(keys, np.ones((1, DIM), np.float32), metadata=[meta])
        assert index.count() == 1 and matched(index, "v = x") == [9]
        assert index.delete(["k\x00z"]) == (0, ["k\x00z"]) and index.count() == 1
    finally:
        index.close()
    lines = tmp_path / "nul.jsonl"
    lines.write_text('{"id": "a", "text": "king", "v": "x\\u0000y"}\n{"id": "b\\u0000c", "text": "queen"}\n'
                     '{"id": "d", "text": "prince", "v": "ok"}\n')
    with Index.open(tmp_path / "nul") as index:
        report = index.add(read_inputs([str(lines)], key_field="id"))
        assert report.added == 1 and report.skipped == 2
        assert all("NUL" in s.reason for s in report.skip_examples()), report.as_dict()
