"""Metadata filters: `--where` expressions parsed into SQL over bound parameters.

Grammar (case-insensitive keywords):
    expr  := term ("or" term)*          term := factor ("and" factor)*
    factor:= "not" factor | "(" expr ")" | FIELD OP VALUE | FIELD ["not"] "in" "(" VALUE ("," VALUE)* ")"
    OP    := = == != < <= > >=
FIELD is a metadata name (dots reach nested objects: `a.b`). VALUE is a number, a quoted
string, or a bare word (a string). `=` and `in` also match inside list values; `!=` and
`not in` match items that lack the field; `<`-style comparisons need the field to hold a
value of the same type (number with number, text with text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from indexer.errors import FilterError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.:/-]))
      | (?P<op><=|>=|!=|==|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[^\s()=!<>,"']+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in"}


@dataclass
class _Tok:
    kind: str
    value: object
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise FilterError(f"cannot read the filter at position {pos + 1}: {text[pos:pos + 20]!r}")
        kind = m.lastgroup
        raw = m.group(kind)
        start = m.start(kind)
        if kind == "str":
            value: object = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif kind == "num":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "word" and raw.lower() in _KEYWORDS:
            kind, value = "kw", raw.lower()
        else:
            value = raw
        tokens.append(_Tok(kind, value, start))
        pos = m.end()
    tokens.append(_Tok("end", None, len(text)))
    return tokens


def _path(field: str) -> str:
    parts = field.split(".")
    if not all(parts):
        raise FilterError(f"bad field name {field!r}")
    return "$" + "".join('."' + p.replace('"', '""') + '"' for p in parts)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.params: list = []

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
                           "(example: --where \"lang=en and year>=2000 and tag in (a,b)\")")

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
        parts = [self.term()]
        while self.is_kw("or"):
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def term(self) -> str:
        parts = [self.factor()]
        while self.is_kw("and"):
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def factor(self) -> str:
        tok = self.peek()
        if self.is_kw("not"):
            self.take()
            return f"NOT {self.factor()}"
        if tok.kind == "punct" and tok.value == "(":
            self.take()
            inner = self.expr()
            if not (self.peek().kind == "punct" and self.peek().value == ")"):
                raise self.fail("')'")
            self.take()
            return inner
        if tok.kind != "word":
            raise self.fail("a field name")
        field = str(self.take().value)
        path = _path(field)
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
        json_types = "('integer','real')" if isinstance(value, (int, float)) else "('text')"
        self.params += [path, path, value]
        return (f"(json_type(metadata, ?) IN {json_types} AND json_extract(metadata, ?) {op.value} ?)")

    def membership(self, path: str, values: list, negate: bool) -> str:
        self.params.append(path)
        self.params += values
        marks = ", ".join("?" for _ in values)
        sql = f"EXISTS (SELECT 1 FROM json_each(metadata, ?) WHERE json_each.value IN ({marks}))"
        return f"NOT {sql}" if negate else sql

    def value(self):
        tok = self.peek()
        if tok.kind in ("str", "num", "word") or tok.kind == "kw":
            self.take()
            return tok.value
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


def parse_where(text: str) -> tuple[str, list]:
    """Translate a filter expression into (SQL condition over `items`, bound parameters)."""
    parser = _Parser(text)
    sql = parser.parse()
    return sql, parser.params
