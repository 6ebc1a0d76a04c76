"""Walking a latent space: terms (keys, texts, image files) to vectors, paths between
two items (interpolate), vector expressions ("king - man + woman") and analogies
(3CosAdd, 3CosMul; Levy & Goldberg 2014)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from latent.indexer.encoders import normalize
from latent.indexer.errors import LatentError
from latent.indexer.images import IMAGE_EXTENSIONS
from latent.indexer.index import Index

from .query import Hit, encode_image, encode_query, search_vectors


class ExpressionError(LatentError):
    """A vector expression cannot be parsed or one of its terms cannot be resolved."""


# -- terms ------------------------------------------------------------------------------------------
@dataclass
class Term:
    """What a term of a query stands for: a stored item (key), a text, or an image file."""

    kind: str  # "key", "text" or "image"
    value: str


def read_term(index: Index, term: str, *, allow_text: bool = True) -> Term:
    """What a term stands for: a key of the index (as given, or lower-cased for word indexes), an
    image file, or (if allowed) a text. A term that looks like an image file (by its extension)
    but names no file is refused, never read as text."""
    found = index.lookup(list(dict.fromkeys([term, term.lower()])))
    for key in dict.fromkeys([term, term.lower()]):
        if key in found:
            return Term("key", key)
    path = Path(term).expanduser()
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        if not path.is_file():
            raise ExpressionError(f"{term!r} looks like an image file, but there is no such file (nor an item "
                                  f"with that key in {index.directory.name})")
        return Term("image", str(path))
    if allow_text and {"text", "word"} & set(index.encoder.modalities):
        return Term("text", term)
    raise ExpressionError(f"{term!r} is not a key of {index.directory} nor an image file"
                          + ("; quote it to use it as text" if not allow_text else ""))


def query_term(index: Index, query: str) -> Term:
    """How a search query is read: an image file when it names one (refused when it looks like
    an image file that does not exist), else a text. Keys are not looked up: a query is text."""
    path = Path(query).expanduser()
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return Term("text", query)
    if not path.is_file():
        raise ExpressionError(f"{query!r} looks like an image file, but there is no such file; to search for "
                              "it as text, put it in a vector expression as a quoted text")
    if "image" not in index.encoder.modalities:
        raise ExpressionError(f"{query!r} is an image file, but the encoder {index.encoder_name!r} of "
                              f"{index.directory.name} takes no images")
    return Term("image", str(path))


def resolve(index: Index, term: str | Term, *, allow_text: bool = True) -> tuple[np.ndarray, Term]:
    """The vector of a term (see read_term), and what it was read as."""
    if not isinstance(term, Term):
        term = read_term(index, term, allow_text=allow_text)
    return _vector_of(index, term), term


def _vector_of(index: Index, term: Term) -> np.ndarray:
    if term.kind == "key":
        vector = index.vector_of(term.value)
        if vector is None:
            raise ExpressionError(f"no item with key {term.value!r} in {index.directory}")
        return vector
    if term.kind == "image":
        return encode_image(index, term.value)
    return encode_query(index, term.value)


# -- paths between items ------------------------------------------------------------------------------
@dataclass
class Step:
    """One stop of a path: the nearest item over the steps [first, last] (t from 0 at A to 1 at B)."""

    first: int
    last: int
    t: float
    key: str
    score: float
    metadata: dict
    text: str | None = None
    kind: str = "text"

    def as_dict(self) -> dict:
        return asdict(self)


def slerp(a: np.ndarray, b: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Points on the great circle from unit vector a to unit vector b (lerp when they are parallel)."""
    omega = float(np.arccos(np.clip(a @ b, -1.0, 1.0)))
    if omega < 1e-6 or np.pi - omega < 1e-6:  # parallel or opposite: no unique great circle
        return lerp(a, b, ts)
    s = np.sin(omega)
    return (np.sin((1 - ts) * omega)[:, None] * a + np.sin(ts * omega)[:, None] * b) / s


def lerp(a: np.ndarray, b: np.ndarray, ts: np.ndarray) -> np.ndarray:
    return (1 - ts)[:, None] * a + ts[:, None] * b


def interpolate(index: Index, a: str | Term, b: str | Term, *, steps: int = 10, method: str = "slerp",
                exclude_endpoints: bool = False, where: str | None = None) -> list[Step]:
    """Walk from A's vector to B's in `steps` points (both ends included) and return the
    nearest indexed item at each, consecutive repeats folded into one Step.

    Between the ends, the items A and B themselves are skipped, so the path shows what
    lies between them (otherwise A and B, nearest to most of the line, hide it); with
    `exclude_endpoints` the two ends are left out of the path too.
    """
    if steps < 2:
        raise LatentError(f"steps must be at least 2 (the two ends), got {steps}")
    if method not in ("slerp", "lerp"):
        raise LatentError(f"unknown interpolation {method!r}; use slerp or lerp")
    va, ta = resolve(index, a)
    vb, tb = resolve(index, b)
    va, vb = normalize(va)[0], normalize(vb)[0]
    ts = np.linspace(0.0, 1.0, steps)
    points = (slerp if method == "slerp" else lerp)(va, vb, ts)
    ends = tuple(t.value for t in (ta, tb) if t.kind == "key")
    middle = search_vectors(index, points[1:-1], k=1, where=where, exclude_keys=ends) if steps > 2 else []
    found = [[] if exclude_endpoints else search_vectors(index, points[0], k=1, where=where)[0],
             *middle,
             [] if exclude_endpoints else search_vectors(index, points[-1], k=1, where=where)[0]]
    path: list[Step] = []
    for i, hits in enumerate(found):
        if not hits:
            continue
        hit = hits[0]
        if path and path[-1].key == hit.key:
            path[-1].last = i
            path[-1].score = max(path[-1].score, hit.score)
            continue
        path.append(Step(first=i, last=i, t=round(float(ts[i]), 4), key=hit.key, score=hit.score,
                         metadata=hit.metadata, text=hit.text, kind=hit.kind))
    return path


# -- expressions -----------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)(?=\s*\*)|(?P<op>[-+*()])|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<word>[^\s+*()"']+))""")


def parse_expression(text: str) -> list[tuple[float, Term]]:
    """Parse `0.5*"a red car" + photo.jpg - king` into (weight, Term) pairs.

    Grammar: expr := signed (("+" | "-") signed)*; signed := ["-"] [NUMBER "*"] atom;
    atom := WORD (a key or an image path) | "quoted text" | "(" expr ")". A "-" inside a
    word belongs to it (face-01.png): put spaces around the + and - operators.
    """
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        m = _TOKEN.match(text, pos)
        if not m or m.lastgroup is None:
            at = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise ExpressionError(f"bad expression {text!r}: cannot read it at position {at + 1} (unclosed quote?)")
        tokens.append((m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup)))
        pos = m.end()
    tokens.append(("end", "", len(text)))
    i = 0

    def fail(what: str) -> ExpressionError:
        kind, value, at = tokens[i]
        found = "the end" if kind == "end" else repr(value)
        return ExpressionError(f"bad expression {text!r}: expected {what} at position {at + 1}, found {found} "
                               "(example: 'king - man + woman' or '0.5*\"a red car\" + photo.jpg')")

    def expr(sign: float) -> list[tuple[float, Term]]:
        nonlocal i
        out = signed(sign)
        while tokens[i][0] == "op" and tokens[i][1] in "+-":
            op = tokens[i][1]
            i += 1
            out += signed(sign if op == "+" else -sign)
        return out

    def signed(sign: float) -> list[tuple[float, Term]]:
        nonlocal i
        if tokens[i][0] == "op" and tokens[i][1] == "-":
            i += 1
            sign = -sign
        weight = 1.0
        if tokens[i][0] == "num":
            weight = float(tokens[i][1])
            i += 1
            if not (tokens[i][0] == "op" and tokens[i][1] == "*"):
                raise fail("'*' after a weight")
            i += 1
        return [(w * weight, t) for w, t in atom(sign)]

    def atom(sign: float) -> list[tuple[float, Term]]:
        nonlocal i
        kind, value, _ = tokens[i]
        if kind == "op" and value == "(":
            i += 1
            inner = expr(sign)
            if not (tokens[i][0] == "op" and tokens[i][1] == ")"):
                raise fail("')'")
            i += 1
            return inner
        if kind == "str":
            i += 1
            return [(sign, Term("text", re.sub(r"\\(.)", r"\1", value[1:-1])))]
        if kind == "word":
            i += 1
            return [(sign, Term("word", value))]
        raise fail("a key, a quoted text, an image path or '('")

    if tokens[0][0] == "end":
        raise ExpressionError("the expression is empty; example: 'king - man + woman'")
    terms = expr(1.0)
    if tokens[i][0] != "end":
        raise fail("'+', '-' or the end")
    return terms


def expression_vector(index: Index, text: str) -> tuple[np.ndarray, list[tuple[float, Term]]]:
    """The normalised vector of an expression, and its terms as resolved."""
    resolved = []
    total = np.zeros(index.dim, dtype=np.float32)
    for weight, term in parse_expression(text):
        if term.kind == "word":  # a bare word: a key or an image file, never free text
            vector, term = resolve(index, term.value, allow_text=False)
        else:
            vector, term = resolve(index, term)
        total += weight * normalize(vector)[0]
        resolved.append((weight, term))
    if not np.any(total):
        raise ExpressionError(f"the expression {text!r} adds up to the zero vector; nothing is near it")
    return normalize(total)[0], resolved


def search_expression(index: Index, text: str, *, k: int = 10, where: str | None = None,
                      include_terms: bool = False) -> list[Hit]:
    """Search by a vector expression; the keys it names are left out of the hits unless asked."""
    vector, terms = expression_vector(index, text)
    exclude = () if include_terms else tuple(t.value for _, t in terms if t.kind == "key")
    return search_vectors(index, vector, k=k, where=where, exclude_keys=exclude)[0]


# -- analogies ---------------------------------------------------------------------------------------------
ANALOGY_METHODS = ("add", "mul")
MUL_EPSILON = 1e-3  # Levy & Goldberg's epsilon for 3CosMul


def analogy_scores(method: str, a: np.ndarray, b: np.ndarray, c: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Scores of candidate unit vectors (n, dim) for "a is to b as c is to ?".

    add: cos(x, b) - cos(x, a) + cos(x, c) (3CosAdd). mul: cos'(x, b) cos'(x, c) / (cos'(x, a) + eps)
    with cos' = (cos + 1) / 2 in [0, 1] (3CosMul).
    """
    if method == "add":
        return candidates @ (b - a + c)
    if method == "mul":
        sa, sb, sc = ((candidates @ v + 1) / 2 for v in (a, b, c))
        return sb * sc / (sa + MUL_EPSILON)
    raise LatentError(f"unknown analogy method {method!r}; use one of {', '.join(ANALOGY_METHODS)}")


def analogy(index: Index, a: str, b: str, c: str, *, k: int = 10, method: str = "add",
            include_inputs: bool = False, pool: int = 200) -> list[Hit]:
    """"a is to b as c is to ?": the k best items by 3CosAdd or 3CosMul.

    The index's nearest neighbours of b - a + c (the 3CosAdd direction) form a pool of
    `pool` candidates; for 3CosMul, whose score also rewards items opposite to a, the
    nearest neighbours of -a join it. The pool is scored exactly from the stored vectors;
    the inputs are left out unless `include_inputs`, and then ranked where their score puts them.
    """
    if method not in ANALOGY_METHODS:
        raise LatentError(f"unknown analogy method {method!r}; use one of {', '.join(ANALOGY_METHODS)}")
    vectors, terms = zip(*(resolve(index, t) for t in (a, b, c)))
    va, vb, vc = (normalize(v)[0] for v in vectors)
    inputs = [t.value for t in terms if t.kind == "key"]
    directions = [normalize(vb - va + vc)[0]] + ([-va] if method == "mul" else [])
    pool_hits: dict[str, Hit] = {}
    for hits in search_vectors(index, np.stack(directions), k=max(pool, k + 3)):
        for hit in hits:
            if include_inputs or hit.key not in inputs:
                pool_hits.setdefault(hit.key, hit)
    if include_inputs:  # the inputs are ranked even when the search did not reach them
        missing = [key for key in inputs if key not in pool_hits]
        ids = [i for i, _, _ in index.lookup(missing).values()]
        for item_id, row in index.fetch(ids).items():
            pool_hits[row["key"]] = Hit(rank=0, key=row["key"], score=0.0, metadata=row["metadata"],
                                        text=row["text"], id=item_id, kind=row["kind"])
    hits = list(pool_hits.values())
    stored = normalize(index.vectors_of([h.id for h in hits]))
    scores = analogy_scores(method, va, vb, vc, stored)
    order = np.argsort(-scores, kind="stable")[:k]
    return [replace(hits[j], rank=r + 1, score=float(scores[j])) for r, j in enumerate(order)]
