"""Metadata filters without a model: the --where parser (the SQL it builds, values, positions
named in errors), values bound and never pasted into SQL, and booleans that are not numbers;
on the tests' `fake` encoder. (Filters against a plain-Python reference on real GloVe vectors
are in tests/integration/test_filters.py.)"""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from conftest import word_records
from latent.indexer import FilterError, Index, Record
from latent.indexer.filters import field_value
from latent.search import parse_where, search


@pytest.fixture
def make_fake_index(tmp_path):
    """Factory: a flat `fake` index over n words (w0, w1, ...), with `metadata(word, i)`."""
    def make(n, metadata):
        index = Index.create(tmp_path / "fake", encoder="fake", index_type="flat")
        index.add(word_records([f"w{i}" for i in range(n)], metadata))
        return index
    return make


# -- filter values are bound, never pasted into SQL -----------------------------------------------
INJECTIONS = ["x' OR 1=1 --", 'a"; DROP TABLE items; --', "') OR ('1'='1", "1; DELETE FROM items"]


@pytest.fixture
def small(make_fake_index):
    index = make_fake_index(n=50, metadata=lambda w, i: {"name": w, "i": i})
    index.add([Record(text="cat", key="evil", metadata={"name": INJECTIONS[0], "arr": [1, 2], "arr[0]": "lit"})])
    return index


def items_table_exists(index) -> bool:
    return index.store.db.execute("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='items'"
                                  ).fetchone()[0] == 1


@pytest.mark.parametrize("expr", [
    '''name="y' OR 1=1 --"''',
    r'''name = "a\"; DROP TABLE items; --"''',
    '''name = "') OR ('1'='1"''',
    '''i = "1; DELETE FROM items"''',
    '''name != "x' OR 1=1 --" and name = "x' OR 1=1 --"''',
    '''name in ("a\\"; DROP TABLE items; --", "1; DELETE FROM items")''',
    '''i < "x'); DROP TABLE items; --"''',
])
def test_values_are_bound_not_pasted(small, expr):
    count = small.count()
    sql, params = parse_where(expr)
    assert "DROP" not in sql and "DELETE" not in sql and "1=1" not in sql and "'1'" not in sql
    assert search(small, "dog", k=10, where=expr) == []
    assert len(small.store.ids_where(sql, params)) == 0
    assert items_table_exists(small) and small.count() == count == 51


def test_injection_text_is_an_ordinary_value(small):
    hits = search(small, "dog", k=10, where='''name = "x' OR 1=1 --"''')
    assert [h.key for h in hits] == ["evil"]
    assert hits[0].metadata["name"] == INJECTIONS[0]
    # field names are letters, digits, _ and dots: brackets cannot index into arrays (or reach the
    # key "arr[0]"), they are refused
    for expr in ("arr[0] = lit", "arr[0] = 1"):
        with pytest.raises(FilterError, match=r"bad field name 'arr\[0\]' at position 1: field names are"):
            search(small, "dog", k=10, where=expr)
    assert [h.key for h in search(small, "dog", k=10, where="arr = 1")] == ["evil"]


def test_unbalanced_quotes_are_filter_errors_not_sql(small):
    for expr in ["name = x' OR '1'='1", "name = 'x", 'name = "x\' OR 1=1 --']:
        with pytest.raises(FilterError):
            search(small, "dog", k=10, where=expr)
    assert items_table_exists(small) and small.count() == 51


# -- booleans --------------------------------------------------------------------------------------
@pytest.fixture
def flags(make_fake_index):
    values = [True, False, 1, 0, "true", None]
    return make_fake_index(n=len(values), metadata=lambda w, i: {"flag": values[i], "i": i}), values


def keys_of(index, expr):
    return sorted(h.metadata["i"] for h in search(index, "dog", k=10, where=expr))


def test_booleans_are_not_numbers_in_comparisons(flags):
    index, _ = flags
    assert keys_of(index, "flag >= 1") == [2]
    assert keys_of(index, "flag <= 0") == [3]
    assert keys_of(index, "flag > -1") == [2, 3]
    assert keys_of(index, "flag = true") == [0]  # bare true/false are JSON booleans
    assert keys_of(index, "flag = false") == [1]
    assert keys_of(index, 'flag = "true"') == [4]  # quoted: the string
    assert keys_of(index, "flag != true") == [1, 2, 3, 4, 5]
    assert keys_of(index, "flag in (true, 0)") == [0, 3]


def test_equality_does_not_confuse_booleans_with_numbers(flags):
    index, _ = flags
    assert keys_of(index, "flag = 1") == [2]
    assert keys_of(index, "flag in (0)") == [3]


# -- the parser ------------------------------------------------------------------------------------
def test_parse_equality_shape():
    sql, params = parse_where("lang = en")
    lang = "json_extract(metadata, '$.\"lang\"')"
    assert sql == (f"((metadata GLOB ?) AND (({lang} IN (?) AND json_type(metadata, '$.\"lang\"') IN ('text')) "
                   f"OR (json_type(metadata, '$.\"lang\"') = 'array' AND {lang} >= '[' AND {lang} < '\\' AND EXISTS "
                   "(SELECT 1 FROM json_each(metadata, '$.\"lang\"') AS e WHERE (e.type IN ('text') AND e.value IN (?))))))")
    # the value's JSON text, which an item must contain (a scan parses only those), then the value
    # bound once for a scalar and once for a list's elements
    assert params == ['*"en"*', "en", "en"]
    assert parse_where("lang=en") == parse_where("lang == en") == (sql, params)


@pytest.mark.parametrize("value", ['b"c', "a\\b", "caf\u00e9", "x/y", "<b>", "tab\there", "\u2028"])
def test_values_an_encoder_may_escape_get_no_text_precheck(value):
    """Only plain ASCII text is looked for as JSON text: a value that JSON may escape (quotes,
    backslashes, non-ASCII, slashes, HTML characters, control characters) is matched by parsing."""
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'  # the filters' quoting
    sql, params = parse_where(f"name = {quoted}")
    assert "GLOB" not in sql and params == [value, value]
    sql, params = parse_where("name in (a, 1)")  # a number among the values (1 matches 1.0): no precheck
    assert "GLOB" not in sql


def test_the_text_precheck_finds_values_in_lists_and_nested_fields(make_fake_index):
    index = make_fake_index(6, lambda w, i: {"tags": ["x", f"t{i % 3}"], "a": {"b": f"v{i % 2}"}, "n": 1.0 * i})

    def keys(expr):
        return sorted(h.key for h in search(index, "w1", k=10, where=expr))

    assert keys("tags = t1") == ["w1", "w4"]
    assert keys("a.b = v1 and tags in (t0, t2)") == ["w3", "w5"]
    assert keys("n = 2") == ["w2"]  # stored as 2.0: matched by parsing, never by its text
    assert keys("tags != t1") == ["w0", "w2", "w3", "w5"]  # negated: no precheck, every item parsed


@pytest.mark.parametrize("value", ["a*b", "a?b", "[x]", "a]b", "[", "T1", "50%_off"])
def test_glob_wildcards_in_values_match_only_themselves(make_fake_index, value):
    """The precheck's GLOB pattern matches the value's characters literally and case-sensitively:
    `*`, `?` and `[` are no wildcards, so an item holding a value that they would match is not
    found, and the item holding the value itself is."""
    others = {"a*b": "axxb", "a?b": "axb", "[x]": "x", "a]b": "a]]b", "[": "[[", "T1": "t1", "50%_off": "50xxoff"}
    index = make_fake_index(2, lambda w, i: {"v": value if i == 0 else others[value]})
    quoted = '"' + value + '"'
    assert [h.key for h in search(index, "w0", k=10, where=f"v = {quoted}")] == ["w0"]
    assert "GLOB" in parse_where(f"v = {quoted}")[0]


def test_parse_comparison_shapes():
    sql, params = parse_where("a.b >= 2000")
    assert sql == ("(json_extract(metadata, '$.\"a\".\"b\"') >= ? AND "
                   "json_type(metadata, '$.\"a\".\"b\"') IN ('integer','real'))")
    assert params == [2000] and type(params[-1]) is int
    sql, params = parse_where("not a.b >= 2000")  # under not, a missing field reads as false first
    assert sql.startswith("NOT COALESCE(json_type(metadata, '$.\"a\".\"b\"') IN ('integer','real') AND ")
    sql, params = parse_where('name < "m"')
    assert "IN ('text')" in sql and "< ?" in sql and params[-1] == "m"
    assert parse_where("x <= 1.5")[1][-1] == 1.5
    assert parse_where("x > -3")[1][-1] == -3
    assert parse_where("x > .5")[1][-1] == 0.5
    assert parse_where("x > 1e3")[1][-1] == 1000.0


def test_an_and_chain_compares_first_and_checks_each_type_once():
    # a range reads the field's type once, after both comparisons (which rule out most items first)
    sql, params = parse_where("price >= 5 and price < 9 and name = x and not price = 7")
    extract, check = "json_extract(metadata, '$.\"price\"')", "json_type(metadata, '$.\"price\"') IN ('integer','real')"
    assert sql.startswith(f"({extract} >= ? AND {extract} < ? AND ((metadata GLOB ?)")
    assert sql.endswith(f" AND {check})") and sql.count(check) == 1
    assert params[:4] == [5, 9, '*"x"*', "x"] and params[-1] == 7
    # alone, or in an `or`, a comparison keeps its check beside it
    assert parse_where("price >= 5 or price < 1")[0] == f"(({extract} >= ? AND {check}) OR ({extract} < ? AND {check}))"
    assert parse_where("not not price >= 5")[0] == f"NOT NOT ({extract} >= ? AND {check})"


def test_parse_lists_and_negations():
    sql, params = parse_where('tag in (a, "b c", 3, -2.5e3, true)')
    assert "IN (?) AND json_type(metadata, '$.\"tag\"') IN ('true')" in sql
    assert "e.type IN ('integer','real') AND e.value IN (?, ?)" in sql
    assert "e.type IN ('text') AND e.value IN (?, ?)" in sql
    assert params == [1, 3, -2500.0, "a", "b c", 3, -2500.0, "a", "b c"]
    assert parse_where("tag not in (a)")[0].startswith("NOT EXISTS")
    assert parse_where("tag != a")[0].startswith("NOT EXISTS")
    assert parse_where("not tag = a")[0].startswith("NOT EXISTS")
    assert parse_where("not not tag = a")[0].startswith("NOT NOT ((metadata GLOB ?) AND ((json_extract")


def test_parse_boolean_structure_and_keyword_case():
    sql, params = parse_where("a = 1 and b = 2 or c = 3")
    conditions = [parse_where(f"{name} = {value}")[0] for name, value in (("a", 1), ("b", 2), ("c", 3))]
    assert sql == f"(({conditions[0]} AND {conditions[1]}) OR {conditions[2]})"
    assert params == [1, 1, 2, 2, 3, 3]
    sql2, params2 = parse_where("a = 1 AND (b = 2 Or c = 3)")
    assert sql2 == f"({conditions[0]} AND ({conditions[1]} OR {conditions[2]}))" and params2 == params
    assert parse_where("NOT a = 1")[0] == parse_where("not a = 1")[0]


@pytest.mark.parametrize("expr, value", [
    ("d = 2020-01-01", "2020-01-01"),
    ("v = 1.2.3", "1.2.3"),
    ("u = http://x.org/a?b", "http://x.org/a?b"),
    ("t = 10:30", "10:30"),
    (r's = "a\"b"', 'a"b'),
    (r"s = 'it\'s'", "it's"),
    (r's = "back\\slash"', "back\\slash"),
    ('s = "with spaces, (and) = <ops>"', "with spaces, (and) = <ops>"),
    ("s = 'and'", "and"),
    ("s = éclair", "éclair"),
])
def test_parse_values(expr, value):
    assert parse_where(expr)[1][-1] == value


@pytest.mark.parametrize("expr, position, expected", [
    ("", 1, "a condition"),
    ("a =", 4, "a value"),
    ("a = 1 b = 2", 7, "'and', 'or' or the end"),
    ("(a = 1", 7, "')'"),
    ("a in 1", 6, "'(' to start a list"),
    ("a in (1,", 9, "a value"),
    ("a not = 1", 7, "'in' after 'not'"),
    ("a ~ 1", 3, "an operator"),
    ("a = 1 or", 9, "a field name"),
    ("and a = 1", 1, "a field name"),
    ("a = (1)", 5, "a value"),
    ("a in ()", 7, "a value"),
    ("a = 1)", 6, "'and', 'or' or the end"),
    ("a <> 1", 4, "a value"),
    ("len >= 5 and and", 14, "a field name"),
    ("a = 1 and (b = 2 or c = 3", 26, "')'"),
    ('a="x', 3, "cannot read"),
])
def test_bad_filters_name_the_position(expr, position, expected):
    with pytest.raises(FilterError) as info:
        parse_where(expr)
    message = str(info.value)
    assert re.search(rf"position {position}(?!\d)", message), message
    assert expected in message


def test_unreadable_token_position_skips_whitespace():
    with pytest.raises(FilterError, match=r"position 5(?!\d)"):
        parse_where('a = "x')


@pytest.mark.parametrize("expr", ["a. = 1", "a..b = 1", "x = 1 and .b = 2"])
def test_bad_field_name_names_the_position(expr):
    with pytest.raises(FilterError, match=r"position \d"):
        parse_where(expr)


def test_keyword_like_values_keep_their_case():
    assert parse_where("state = OR")[1] == ['*"OR"*', "OR", "OR"]  # (first: the JSON text a scan looks for)
    assert parse_where("state in (IN, NOT)")[1] == ['*"IN"*', '*"NOT"*', "IN", "NOT", "IN", "NOT"]


# -- field_value: the filters' field rule and walk, in Python (the map colours by it) -------------------
FIELD_ROWS = [{"a": 1}, {"a": {"b": "x", "c": [1, 2]}}, {"a.b": 5}, {"a": {"b": None}}, {"a": [{"b": 1}]}, {},
              {"a": {"b": {"c": True}}}, {"x_1": 2.5, "a": {"b": False}}, {"_": {"Z9": "deep"}}]


@pytest.mark.parametrize("name", ["a", "a.b", "a.c", "a.b.c", "x_1", "b", "_.Z9"])
def test_field_value_reads_what_the_filters_compare(name):
    path = re.search(r"json_extract\(metadata, '([^']*)'\)", parse_where(f"{name} > 0")[0])[1]  # the filter's path
    db = sqlite3.connect(":memory:")
    for metadata in FIELD_ROWS:
        text = json.dumps(metadata)
        found, kind = db.execute("SELECT json_extract(?, ?), json_type(?, ?)", (text, path, text, path)).fetchone()
        expected = json.loads(found) if kind in ("object", "array") else (kind == "true") if kind in ("true", "false") \
            else found
        value = field_value(metadata, name)
        assert value == expected and type(value) is type(expected), (name, metadata, value, expected)


@pytest.mark.parametrize("name", ["a..b", "1a", "a-b", "a.", ".a", "a:b"])
def test_field_value_takes_the_filters_field_names(name):
    with pytest.raises(FilterError, match="bad field name"):
        parse_where(f"{name} > 0")
    with pytest.raises(FilterError, match="bad field name"):
        field_value({name: 1}, name)
