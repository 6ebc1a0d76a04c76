"""Metadata filters: `where` expressions parsed into SQL over bound parameters.

Grammar (case-insensitive keywords):
    expr  := term ("or" term)*          term := factor ("and" factor)*
    factor:= "not" factor | "(" expr ")" | FIELD OP VALUE | FIELD ["not"] "in" "(" VALUE ("," VALUE)* ")"
    OP    := = == != < <= > >=
FIELD is a metadata name: ASCII letters, digits, `_` and dots, starting with a letter or `_`
(`^[A-Za-z_][A-Za-z0-9_.]*$`); dots reach nested objects (`a.b`) and may not be doubled or
trailing. Metadata keys outside that rule are stored but cannot be filtered on. VALUE is a
number (ASCII digits; integers must fit in 64 bits, write `1e20` for larger ones), a quoted
string ('...' or "...", where a backslash makes the next character literal, as in "a\\"b" or
'it\\'s'), `true`/`false` (JSON booleans), or another bare word (a string, taken as written).
Text values may not contain NUL characters (SQLite's JSON functions stop at them).
Matching is type-strict: 1 matches 1 and 1.0, never "1" or true. `=` and `in` also match
inside list values; `!=` and `not in` match items that lack the field; `<`-style comparisons
need the field to hold a value of the same type (number with number, text with text,
compared by code point) and are false otherwise, also under `not`. Every value reaches
SQLite as a bound parameter, never as SQL text. A field name, which the rule above limits to
letters, digits, `_` and dots, is written into the SQL as its JSON path (`'$."a"."b"'`), so that
SQLite can use an expression index on `json_extract(metadata, '$."a"."b"')` (made by
`latent index-field`, see `index_expression`): a condition that is not under a `not` reads
the field with `json_extract` (=, in and comparisons, with the type checks beside it), which
such an index answers; under `not`, where a missing field must read as false first, the
conditions keep the forms that scan. `field_value` reads a field of one item's metadata in
Python by the same rule and walk (the map colours points by it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FilterError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\[\s\S])*"|'(?:[^'\\]|\\[\s\S])*')
      | (?P<num>-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?(?![\w.:/-]))
      | (?P<op><=|>=|!=|==|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[^\s()=!<>,"']+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in"}
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INT64 = (-(2**63), 2**63 - 1)
# Bounds that keep every filter within what SQLite's parser takes (its stack overflowed at 77
# nested nots, and at about 1,000 and/or terms) and Python's recursion: deeper or longer
# filters are refused with a FilterError, never sent to SQLite.
MAX_DEPTH = 32  # nested "not"s and parentheses
MAX_CONDITIONS = 256  # comparisons and memberships in one filter


@dataclass(frozen=True)
class _Compare:
    """A comparison outside `not`: the comparison itself and the type check that must hold beside
    it. An `and` chain writes every comparison before the type checks, each check once (a range
    `a >= 1 and a < 9` reads the type once, and only for items inside the range: the scan of an
    unindexed range at 1M items, median 921 ms -> 740 ms); alone, it is `(comparison AND check)`."""
    comparison: str
    check: str

    def sql(self) -> str:
        return f"({self.comparison} AND {self.check})"


def _sql(part) -> str:
    return part.sql() if isinstance(part, _Compare) else part


@dataclass
class _Tok:
    kind: str
    value: object
    pos: int
    raw: str = ""


def _tokenize(text: str) -> list[_Tok]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            pos += len(text[pos:]) - len(text[pos:].lstrip())
            raise FilterError(f"bad filter {text!r}: cannot read it at position {pos + 1}: {text[pos:pos + 20]!r} "
                              "(unclosed quote?)")
        kind = m.lastgroup
        raw = m.group(kind)
        start = m.start(kind)
        if kind == "str":
            value: object = re.sub(r"\\([\s\S])", r"\1", raw[1:-1])
        elif kind == "num":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "word" and raw.lower() in _KEYWORDS:
            kind, value = "kw", raw.lower()
        elif kind == "word" and raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            value = raw
        tokens.append(_Tok(kind, value, start, raw))
        pos = m.end()
    tokens.append(_Tok("end", None, len(text)))
    return tokens


def _name_problem(name: str) -> str | None:
    """Why `name` is not a field name (the rule above), or None when it is one."""
    if not _FIELD.fullmatch(name):
        return ": field names are letters, digits, _ and dots, starting with a letter or _ (as in year or a.b_2)"
    if not all(name.split(".")):
        return " (dots separate nested names, as in a.b)"
    return None


def field_value(metadata, name: str):
    """The value of field `name` in one item's metadata, as the filters read it: dots reach
    nested objects (`a.b` is metadata["a"]["b"], never a key "a.b"); None where absent.
    FilterError when `name` breaks the field-name rule."""
    problem = _name_problem(name)
    if problem:
        raise FilterError(f"bad field name {name!r}{problem}")
    value = metadata
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _path(field: str, text: str, pos: int) -> str:
    """The SQLite JSON path of `field`: each dotted part quoted, the same walk as field_value."""
    problem = _name_problem(field)
    if problem:
        raise FilterError(f"bad filter {text!r}: bad field name {field!r} at position {pos + 1}{problem}")
    return _json_path(field)


def _json_path(field: str) -> str:
    return "$" + "".join('."' + p + '"' for p in field.split("."))


def _extract(path: str) -> str:
    """SQL reading the value at `path` (a path of a checked field name: no quote can end the literal)."""
    return f"json_extract(metadata, '{path}')"


def index_expression(field: str) -> str:
    """The SQL expression an index on `field` holds: exactly what the filters compare, so that
    SQLite's planner uses the index. FilterError when `field` breaks the field-name rule."""
    problem = _name_problem(field)
    if problem:
        raise FilterError(f"bad field name {field!r}{problem}")
    return _extract(_json_path(field))


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.params: list = []
        self.depth = 0
        self.conditions = 0
        self.fields: dict[str, str] = {}  # field name -> its JSON path, in order of appearance
        self.negated = False  # under an odd number of `not`s: a NULL would turn true

    def nest(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter too deeply nested: more than {MAX_DEPTH} levels of 'not' and parentheses "
                              f"(at position {tok.pos + 1}); simplify it")

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, what: str, tok: _Tok | None = None) -> FilterError:
        tok = tok or self.peek()
        found = "the end" if tok.kind == "end" else repr(str(tok.value))
        return FilterError(f"bad filter {self.text!r}: expected {what} at position {tok.pos + 1}, found {found} "
                           "(example: \"lang=en and year>=2000 and tag in (a,b)\")")

    def is_kw(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "kw" and tok.value == word

    def parse(self) -> str:
        if self.peek().kind == "end":
            raise self.fail("a condition")
        sql = self.expr()
        if self.peek().kind != "end":
            raise self.fail("'and', 'or' or the end")
        return sql

    def expr(self) -> str:
        return self.chain("or", self.term)

    def term(self) -> str:
        return self.chain("and", self.factor)

    def chain(self, keyword: str, operand) -> str:
        """operand (keyword operand)*, as one parenthesised SQL condition. In an `and` chain the
        comparisons come first and their type checks last, each once (see _Compare): the same
        condition (`and` is commutative and idempotent, also for NULLs), read in fewer steps."""
        parts = [operand()]
        while self.is_kw(keyword):
            self.take()
            parts.append(operand())
        if len(parts) == 1:
            return _sql(parts[0])
        if keyword == "and":
            checks = list(dict.fromkeys(p.check for p in parts if isinstance(p, _Compare)))
            parts = [p.comparison if isinstance(p, _Compare) else p for p in parts] + checks
        return "(" + f" {keyword.upper()} ".join(parts) + ")"

    def factor(self) -> "str | _Compare":
        tok = self.peek()
        if self.is_kw("not"):
            self.take()
            self.nest(tok)
            self.negated = not self.negated
            inner = _sql(self.factor())
            self.negated = not self.negated
            self.depth -= 1
            return f"NOT {inner}"
        if tok.kind == "punct" and tok.value == "(":
            self.take()
            self.nest(tok)
            inner = self.expr()
            if not (self.peek().kind == "punct" and self.peek().value == ")"):
                raise self.fail("')'")
            self.take()
            self.depth -= 1
            return inner
        if tok.kind != "word" or not isinstance(tok.value, str):
            raise self.fail("a field name")
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(f"filter too long: more than {MAX_CONDITIONS} conditions (at position {tok.pos + 1}); "
                              "use 'in (...)' for many values of one field")
        field = str(self.take().value)
        path = _path(field, self.text, tok.pos)
        self.fields.setdefault(field, path)
        negate = False
        if self.is_kw("not"):
            self.take()
            negate = True
            if not self.is_kw("in"):
                raise self.fail("'in' after 'not'")
        if self.is_kw("in"):
            self.take()
            values = self.value_list()
            return self.membership(path, values, negate)
        op = self.peek()
        if op.kind != "op":
            raise self.fail("an operator (=, !=, <, <=, >, >=, in)")
        self.take()
        value = self.value()
        if op.value in ("=", "=="):
            return self.membership(path, [value], False)
        if op.value == "!=":
            return self.membership(path, [value], True)
        if isinstance(value, bool):
            raise FilterError(f"bad filter {self.text!r}: true/false can only be compared with = or != "
                              f"(position {op.pos + 1})")
        json_types = "('integer','real')" if isinstance(value, (int, float)) else "('text')"
        self.params.append(value)
        if not self.negated:  # NULL (a missing field) reads as false here: the form an index answers
            return _Compare(f"{_extract(path)} {op.value} ?", f"json_type(metadata, '{path}') IN {json_types}")
        # COALESCE: a missing field gives NULL, which must read as false, also under NOT
        return (f"COALESCE(json_type(metadata, '{path}') IN {json_types} AND {_extract(path)} {op.value} ?, 0)")

    def membership(self, path: str, values: list, negate: bool) -> str:
        """The field's value (or an element of its list value) equals one of `values`, type-strictly."""
        groups = _groups(values)
        if not negate and not self.negated:
            return self.indexed_membership(path, groups)
        conditions, params = [], []
        for types, group in groups:
            if types in ("'true'", "'false'"):
                conditions.append(f"e.type = {types}")
            else:
                conditions.append(f"(e.type IN ({types}) AND e.value IN ({', '.join('?' for _ in group)}))")
                params += group
        self.params += params
        sql = (f"EXISTS (SELECT 1 FROM json_each(metadata, '{path}') AS e WHERE json_type(metadata, '{path}') "
               f"!= 'object' AND ({' OR '.join(conditions)}))")
        return f"NOT {sql}" if negate else sql

    def indexed_membership(self, path: str, groups: list[tuple[str, list]]) -> str:
        """membership, not negated, as terms that each read `json_extract` of the field (which an
        expression index answers) beside a type check: one per type of value for a scalar value,
        and one for a list value (json_extract gives its JSON text, which begins with '[')."""
        value = _extract(path)
        terms, element_conditions, params = [], [], []
        for types, group in groups:
            marks = ", ".join("?" for _ in group)
            terms.append(f"({value} IN ({marks}) AND json_type(metadata, '{path}') IN ({types}))")
            params += group
            if types in ("'true'", "'false'"):
                element_conditions.append(f"e.type = {types}")
            else:
                element_conditions.append(f"(e.type IN ({types}) AND e.value IN ({marks}))")
        params += [v for types, group in groups if types not in ("'true'", "'false'") for v in group]
        # the type first: a scan (no index) reads one JSON function per item for this term
        terms.append(f"(json_type(metadata, '{path}') = 'array' AND {value} >= '[' AND {value} < '\\' "
                     f"AND EXISTS (SELECT 1 FROM json_each(metadata, '{path}') AS e "
                     f"WHERE {' OR '.join(element_conditions)}))")
        sql = "(" + " OR ".join(terms) + ")"
        literals = _literals(groups)
        if literals:  # a scan first looks for the value's JSON text, then parses only the items that hold it
            sql = "((" + " OR ".join("metadata GLOB ?" for _ in literals) + f") AND {sql})"
            params = literals + params
        self.params += params
        return sql

    def value(self):
        tok = self.peek()
        if tok.kind == "num" and isinstance(tok.value, int) and not _INT64[0] <= tok.value <= _INT64[1]:
            raise FilterError(f"bad filter {self.text!r}: the integer {tok.raw} at position {tok.pos + 1} does not "
                              "fit in 64 bits (write it as a float, as in 1e20, to compare approximately)")
        if tok.kind in ("str", "word") and isinstance(tok.value, str) and not _matchable(tok.value):
            bad = ("a NUL character (SQLite's JSON functions end text there, so it could never match)"
                   if "\0" in tok.value else "a character that is not valid Unicode text (an undecodable byte?)")
            raise FilterError(f"bad filter {self.text!r}: the value at position {tok.pos + 1} contains {bad}")
        if tok.kind in ("str", "num", "word"):
            self.take()
            return tok.value
        if tok.kind == "kw":  # a value that spells a keyword keeps its case: state = OR
            self.take()
            return tok.raw
        raise self.fail("a value")

    def value_list(self) -> list:
        if not (self.peek().kind == "punct" and self.peek().value == "("):
            raise self.fail("'(' to start a list of values")
        self.take()
        values = [self.value()]
        while self.peek().kind == "punct" and self.peek().value == ",":
            self.take()
            values.append(self.value())
        if not (self.peek().kind == "punct" and self.peek().value == ")"):
            raise self.fail("',' or ')'")
        self.take()
        return values


def _groups(values: list) -> list[tuple[str, list]]:
    """`values` by the JSON types that match them: (SQL list of type names, values), where the
    booleans' values are 1 and 0 (what json_extract gives for true and false)."""
    groups = []
    for flag in (True, False):
        if any(v is flag for v in values):
            groups.append(("'true'" if flag else "'false'", [int(flag)]))
    numbers = [v for v in values if type(v) in (int, float)]
    texts = [v for v in values if isinstance(v, str)]
    groups += [(types, group) for types, group in (("'integer','real'", numbers), ("'text'", texts)) if group]
    return groups


_PLAIN = re.compile(r"[A-Za-z0-9 _.,:;@#%*+=?!'()\[\]{}|~^$-]*")
_GLOB_SPECIAL = re.compile(r"[*?\[]")  # GLOB's wildcards, each matched as itself inside [ ]


def _literals(groups: list[tuple[str, list]]) -> list[str] | None:
    """GLOB patterns of the JSON texts that an item's metadata must contain to hold one of the
    values: for text values only, each made of plain ASCII characters (`_PLAIN`), which every
    JSON encoder writes as themselves between double quotes (also inside lists and nested
    objects): one case-sensitive GLOB per item (faster than instr, exact unlike LIKE) rules out most
    items of a scan before SQLite parses their JSON (a field without an index at 1M items: about
    1 s of JSON parsing). None when any value is a number (1 matches 1.0), a boolean, or text
    that an encoder may escape: then every item is parsed."""
    if any(types != "'text'" for types, _ in groups):
        return None
    texts = [v for _, group in groups for v in group]
    if not all(_PLAIN.fullmatch(v) for v in texts):
        return None
    return ["*" + _GLOB_SPECIAL.sub(r"[\g<0>]", '"' + v + '"') + "*" for v in texts]


def _matchable(text: str) -> bool:
    """No NUL (SQLite's JSON functions end stored text there) and no lone surrogate (an undecodable
    command-line byte), which SQLite cannot take as a parameter."""
    if "\0" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_where(text: str) -> tuple[str, list]:
    """Translate a filter expression into (SQL condition over `items`, bound parameters)."""
    parser = _Parser(text)
    sql = parser.parse()
    return sql, parser.params


def filter_fields(text: str) -> dict[str, str]:
    """The fields a filter expression names, each with the JSON path it reads."""
    parser = _Parser(text)
    parser.parse()
    return parser.fields
