"""Deep and long filters are refused by the parser with a one-line FilterError, never sent to
SQLite to come back as "latent.db is damaged" (issue "Reliability, round 2", finding 9)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import latent
from latent.cli import cli
from latent.indexer.errors import FilterError
from latent.indexer.filters import MAX_CONDITIONS, MAX_DEPTH

HOSTILE = {
    "77 nots": "not " * 77 + "a=1",
    "1,001 and-terms": " and ".join(f"a={i}" for i in range(1001)),
    "1,001 or-terms": " or ".join(f"a={i}" for i in range(1001)),
    "330 parentheses": "(" * 330 + "a=1" + ")" * 330,
}


@pytest.fixture
def index(tmp_path):
    ix = latent.create(tmp_path / "idx", encoder="vectors:4", index_type="flat")
    rng = np.random.default_rng(0)
    ix.add_vectors([f"k{i}" for i in range(50)], rng.random((50, 4), dtype=np.float32),
                   metadata=[{"a": i, "b": {"c": i}} for i in range(50)])
    return ix


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_filters_are_filter_errors(index, name):
    with pytest.raises(FilterError, match="filter too (deeply nested|long)"):
        index.search_vectors(np.ones(4, dtype=np.float32), k=5, where=HOSTILE[name])
    assert index.check()["ok"]


@pytest.mark.parametrize("name", HOSTILE)
def test_cli_says_filter_not_damaged_store(index, name):
    out = CliRunner().invoke(cli, ["similar", str(index.directory), "--key", "k1", "--where", HOSTILE[name]])
    assert out.exit_code == 1
    assert "filter too" in out.output and "damaged" not in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_filters_at_the_limits_run_on_sqlite(index):
    query = np.ones(4, dtype=np.float32)
    nots = "not " * MAX_DEPTH + "a=1"  # an even number of nots: a=1
    parens = "(" * MAX_DEPTH + "a=1" + ")" * MAX_DEPTH
    many_or = " or ".join(f"a in ({i}, {i + 1})" for i in range(MAX_CONDITIONS))
    nested_many = "not (" * (MAX_DEPTH // 2) + " or ".join(f"b.c={i}" for i in range(MAX_CONDITIONS - 1)) \
        + ")" * (MAX_DEPTH // 2)
    assert [h.key for h in index.search_vectors(query, k=5, where=nots)[0]] == ["k1"]
    assert [h.key for h in index.search_vectors(query, k=5, where=parens)[0]] == ["k1"]
    assert len(index.search_vectors(query, k=60, where=many_or)[0]) == 50
    assert len(index.search_vectors(query, k=60, where=nested_many)[0]) == 50  # 16 nots: even
    with pytest.raises(FilterError):
        index.search_vectors(query, k=5, where="not " * (MAX_DEPTH + 1) + "a=1")
    with pytest.raises(FilterError):
        index.search_vectors(query, k=5, where=" or ".join(f"a={i}" for i in range(MAX_CONDITIONS + 1)))


def test_sqlite_refusing_a_statement_is_a_filter_error(index):
    with pytest.raises(FilterError, match="too complex"):
        index.store.ids_where("NOT " * 300 + "1", [])
