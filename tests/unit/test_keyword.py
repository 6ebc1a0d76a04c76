"""Keyword (SQLite FTS5, BM25) and hybrid (reciprocal rank fusion) search on the `fake` encoder:
the keyword index follows every write (adds, upserts, metadata updates, deletions), an index
made before it gets it on open (a read-only open says how to get it), filters apply in every
mode, user text never reaches FTS5 as syntax unless asked, and malformed FTS5 syntax is a
one-line KeywordQueryError (CLI: exit 1, one line)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

import latent
import latent.indexer.store as store_module
from latent.cli import cli
from latent.indexer.errors import InputError, KeywordQueryError
from latent.indexer.store import DB_NAME, FTS_TABLE, MIGRATIONS
from latent.search.keyword import RRF_K, fuse, match_expression
from conftest import FakeEncoder

TEXTS = {
    "pandas": "pandas.read_csv reads a comma-separated file into a DataFrame",
    "licence": "Distributed under the GPL-3.0-or-later licence, see COPYING",
    "sqlite": "SQLITE_BUSY means another connection holds the write lock",
    "cafe": "Un café au lait à Zürich",
    "rain": "Heavy rain and flooding closed the coastal road",
}


@pytest.fixture
def ix(tmp_path):
    index = latent.create(tmp_path / "notes", encoder="fake")
    index.add([{"key": k, "text": t, "metadata": {"n": i}} for i, (k, t) in enumerate(TEXTS.items())])
    yield index
    index.close()


def keys(hits) -> list[str]:
    return [h.key for h in hits]


def fts_rows(ix) -> int:
    return ix.store.db.execute(f"SELECT count(*) FROM {FTS_TABLE}_docsize").fetchone()[0]


def test_keyword_finds_exact_names_and_codes(ix):
    assert keys(ix.search("read_csv", mode="keyword")) == ["pandas"]
    assert keys(ix.search("GPL-3.0-or-later", mode="keyword")) == ["licence"]
    assert keys(ix.search("sqlite_busy", mode="keyword")) == ["sqlite"]  # case folded
    assert keys(ix.search("cafe zurich", mode="keyword")) == ["cafe"]  # accents folded
    assert keys(ix.search("flood", mode="keyword")) == ["rain"]  # stemmed: flooding
    hits = ix.search("rain road", mode="keyword")
    assert keys(hits) == ["rain"] and hits[0].score > 0 and hits[0].text == TEXTS["rain"]
    assert hits[0].metadata == {"n": 4} and hits[0].kind == "text" and hits[0].rank == 1
    assert ix.search("volcano", mode="keyword") == []


def test_more_matching_words_rank_first(ix):
    hits = ix.search("write lock rain", mode="keyword")
    assert keys(hits) == ["sqlite", "rain"] and hits[0].score > hits[1].score


def test_user_text_is_never_fts_syntax(ix):
    for text in ['a AND ("', "NEAR(x y", "text:rain", '"rain', "rain*", "-rain", "rain OR", "NOT rain", "^rain"]:
        ix.search(text, mode="keyword")  # no error: each chunk is a quoted phrase
    assert match_expression('say "hi" now') == '"say" OR """hi""" OR "now"'
    with pytest.raises(KeywordQueryError, match="no letters or digits"):
        ix.search("-- !!", mode="keyword")
    with pytest.raises(InputError, match="empty"):
        ix.search("  ", mode="hybrid")


def test_fts5_syntax_on_request_and_its_errors(ix):
    assert keys(ix.search("rain AND road", mode="keyword", syntax="fts5")) == ["rain"]
    assert keys(ix.search("rai*", mode="keyword", syntax="fts5")) == ["rain"]
    assert ix.search("rain NOT road", mode="keyword", syntax="fts5") == []
    for bad in ["rain AND (", "nosuchcolumn:rain", '"unclosed']:
        with pytest.raises(KeywordQueryError) as e:
            ix.search(bad, mode="hybrid", syntax="fts5")
        assert "\n" not in str(e.value) and "keyword query" in str(e.value)
    with pytest.raises(InputError, match="unknown keyword query syntax"):
        ix.search("rain", mode="keyword", syntax="sql")
    with pytest.raises(InputError, match="unknown search mode"):
        ix.search("rain", mode="bm25")


def test_filters_apply_in_every_mode(ix):
    for mode in ("vector", "keyword", "hybrid"):
        hits = ix.search("rain road lock", mode=mode, where="n >= 2 and n != 4")
        assert hits and {h.metadata["n"] for h in hits} <= {2, 3}, mode
        assert "rain" not in keys(hits)
    assert ix.search("rain", mode="keyword", where="n = 1") == []


def test_hybrid_fuses_both_rankings(ix):
    vector = keys(ix.search("rain road", k=5))
    keyword = keys(ix.search("rain road", mode="keyword", k=5))
    hybrid = ix.search("rain road", mode="hybrid", k=5)
    assert keys(hybrid)[0] == "rain"  # first in both
    assert set(keys(hybrid)) == set(vector) | set(keyword)
    expected = {key: sum(1 / (RRF_K + r.index(key) + 1) for r in (vector, keyword) if key in r) for key in keys(hybrid)}
    assert [h.score for h in hybrid] == pytest.approx([expected[h.key] for h in hybrid])
    assert [h.rank for h in hybrid] == [1, 2, 3, 4, 5]


def test_fuse_is_reciprocal_rank_fusion():
    fused = fuse([[1, 2, 3], [3, 4]])
    assert [i for i, _ in fused] == [3, 1, 2, 4]  # 2 and 4 tie at 1/62: the first ranking's first
    assert dict(fused)[3] == pytest.approx(1 / 63 + 1 / 61) and dict(fused)[1] == pytest.approx(1 / 61)
    assert [i for i, _ in fuse([[7, 8], [8, 7]])] == [7, 8]  # a tie: the first ranking's best first


def test_upserts_deletes_and_metadata_updates_keep_the_keyword_index(ix):
    assert fts_rows(ix) == 5
    ix.add([{"key": "rain", "text": "Snow drifts blocked the mountain pass", "metadata": {"n": 4}}])
    assert ix.search("flooding", mode="keyword") == []
    assert keys(ix.search("snow drifts", mode="keyword")) == ["rain"]
    ix.add([{"key": "cafe", "text": TEXTS["cafe"], "metadata": {"n": 9}}])  # metadata only
    assert ix.search("zurich", mode="keyword", where="n = 9")[0].key == "cafe"
    assert ix.delete(["sqlite"]) == (1, [])
    assert ix.search("sqlite_busy", mode="keyword") == [] and fts_rows(ix) == 4
    ix.add_vectors(["v"], FakeEncoder().encode(["a vector with words"]), texts=["brought its own vector"])
    assert keys(ix.search("own vector", mode="keyword")) == ["v"] and fts_rows(ix) == 5
    assert ix.store.db.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('integrity-check')") is not None


def test_check_finds_and_rebuild_repairs_a_keyword_index_out_of_step(ix):
    assert ix.check()["ok"]
    ix.store.db.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('delete-all')")  # as a hand edit would
    assert ix.search("rain", mode="keyword") == []
    report = ix.check()
    assert not report["ok"] and any("keyword index holds 0 texts, the store 5" in p for p in report["problems"])
    assert any("rebuilt the keyword index" in r for r in ix.rebuild())
    assert ix.check()["ok"] and keys(ix.search("rain road", mode="keyword")) == ["rain"]


def test_an_older_index_gets_its_keyword_index_on_open(ix, monkeypatch):
    directory = ix.directory
    ix.close()
    conn = sqlite3.connect(directory / DB_NAME)
    for trigger in ("items_fts_insert", "items_fts_delete", "items_fts_update"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute(f"DROP TABLE {FTS_TABLE}")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")  # as an index made before the migration
    conn.commit()
    conn.close()

    monkeypatch.setattr(store_module, "_writable", lambda path: False)  # a reader without write access
    reader = latent.open(directory)
    assert reader.store.read_only and keys(reader.search("rain road")) and reader.count() == 5
    with pytest.raises(KeywordQueryError, match="open it once with write access"):
        reader.search("rain", mode="keyword")
    reader.close()
    monkeypatch.undo()

    again = latent.open(directory)
    assert again.store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert keys(again.search("read_csv", mode="keyword")) == ["pandas"] and fts_rows(again) == 5
    again.add([{"key": "new", "text": "a brand new text about volcanoes"}])
    assert keys(again.search("volcanoes", mode="keyword")) == ["new"]
    again.close()


def test_words_and_textless_items_say_what_keyword_mode_does(tmp_path):
    words = latent.create(tmp_path / "words", encoder="fake")
    words.add([{"key": w, "text": w, "kind": "word"} for w in ("king", "queen", "castle")])
    with pytest.raises(KeywordQueryError, match="single words"):
        words.search("king", mode="keyword")
    assert words.search("king", mode="vector")[0].key == "king"
    words.close()
    bare = latent.create(tmp_path / "bare", encoder="fake")
    bare.add_vectors(["a", "b"], FakeEncoder().encode(["one", "two"]))
    with pytest.raises(KeywordQueryError, match="no texts to match keywords against"):
        bare.search("one", mode="hybrid")
    with pytest.raises(InputError, match="needs a text query"):
        bare.search(np.ones(32, np.float32), mode="keyword")
    with pytest.raises(InputError, match="mode vector"):
        bare.search(expr="a + b", mode="hybrid")
    bare.close()


def test_cli_mode_and_one_line_errors(ix):
    directory = str(ix.directory)
    ix.close()
    runner = CliRunner()
    result = runner.invoke(cli, ["search", directory, "GPL-3.0-or-later", "--mode", "keyword", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mode"] == "keyword" and [h["key"] for h in doc["hits"]] == ["licence"]
    table = runner.invoke(cli, ["search", directory, "rain road", "--mode", "hybrid", "-k", "2"])
    assert table.exit_code == 0 and table.stdout.splitlines()[2].split()[2] == "rain"
    bad = runner.invoke(cli, ["search", directory, "rain AND (", "--mode", "keyword", "--syntax", "fts5"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and bad.output.startswith("Error: cannot read the keyword")
    expr = runner.invoke(cli, ["search", directory, "--expr", "rain", "--mode", "keyword"])
    assert expr.exit_code == 2 and "--mode vector" in expr.output
