"""What a new user hit in the first hour (issue "What a new user hit"): messages that mislead.
Each test failed before its fix."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import latent
from latent.cli import cli
from latent.search.explore import ExpressionError


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    ix = latent.create(tmp_path_factory.mktemp("new-user") / "words", encoder="glove")
    ix.add([{"text": w, "key": w, "metadata": {"year": 1990 + i, "tag": {"kind": "w"}}}
            for i, w in enumerate(["king", "queen", "france", "germany", "paris", "berlin"])])
    return ix


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_search_without_a_query_says_it_is_missing(words):
    out = run("search", words.directory)
    assert out.exit_code == 2 and "the query is missing" in out.output and "not both" not in out.output
    assert "not both" in run("search", words.directory, "king", "--expr", "king").output


def test_a_path_is_never_taken_as_text(words, tmp_path):
    out = run("search", words.directory, "pics/horse.png")
    assert out.exit_code == 1 and "looks like an image file, but there is no such file" in out.output
    (tmp_path / "real.png").write_bytes(b"")
    out = run("search", words.directory, str(tmp_path / "real.png"))
    assert out.exit_code == 1 and "takes no images" in out.output


def test_interpolate_says_how_it_read_each_end(words):
    out = run("interpolate", words.directory, "france", "KING", "--steps", "3")
    assert out.exit_code == 0
    assert "A: the key 'france'; B: the key 'king'" in out.stderr
    out = run("interpolate", words.directory, "france", "Germani", "--steps", "3")
    assert "B: the text 'Germani' (no item has it as its key)" in out.stderr or out.exit_code == 1
    out = run("interpolate", words.directory, "france", "pics/x.jpg")
    assert out.exit_code == 1 and "looks like an image file" in out.output
    assert "A:" not in run("interpolate", words.directory, "france", "king", "-q").stderr


def test_a_filter_on_a_field_no_item_has_names_it(words):
    out = run("search", words.directory, "king", "--where", "yeer>=2004")
    assert out.exit_code == 1
    assert "no item of words has the field 'yeer'; its items have: tag, year" in out.output
    out = run("similar", words.directory, "--key", "king", "--where", "tag.knd = w")
    assert out.exit_code == 1 and "has the field 'tag.knd'" in out.output
    assert words.search("king", where="tag.knd = w") == []  # through the API, a valid query with no hits
    assert run("search", words.directory, "king", "--where", "year >= 2100").output.strip() == "(no hits)"
    assert [h.key for h in words.search("king", where="tag.kind = w", k=1)] == ["king"]


def test_read_term_refuses_missing_image_paths(words):
    with pytest.raises(ExpressionError, match="no such file"):
        words.interpolate("france", "missing.jpeg")


def test_first_time_work_is_told_on_stderr(tmp_path, monkeypatch):
    """Building a built-in index takes a while once: outside a terminal it is one line when it
    starts and one when it ends (make demo sat silent for 45 s); --quiet silences them."""
    monkeypatch.setenv("LATENT_CACHE_DIR", str(tmp_path / "cache"))
    out = run("search", "@sentences", "storms at sea", "-k", "1")
    assert out.exit_code == 0, out.output
    lines = out.stderr.splitlines()
    assert lines[0].startswith("building the built-in index @sentences in ") and "(400 items)" in lines[0]
    assert lines[-1].endswith(" s") and ": done in " in lines[-1]
    assert run("search", "@sentences", "storms at sea", "-k", "1").stderr == ""  # built: nothing to tell
    monkeypatch.setenv("LATENT_CACHE_DIR", str(tmp_path / "cache2"))
    assert run("search", "@sentences", "storms", "-k", "1", "-q").stderr == ""


def test_the_encoder_listing_says_what_is_true():
    """`latent encoders` called efficientnet "the default for images", but create defaults to
    minilm everywhere: the listing names the one default there is."""
    listing = run("encoders", "--json")
    described = {e["name"]: e["description"] for e in __import__("json").loads(listing.output)["encoders"]}
    assert "default" not in described["efficientnet"] and "default" not in described["glove"]
    assert "default encoder of create" in described["minilm"]
    assert run("create", "--help").output.count("minilm") >= 1


def test_glove_averages_the_words_it_knows(tmp_path):
    """One unknown word no longer skips a whole row: the text is the mean of its known words,
    the unknown ones are named, and only a text with no known word is skipped."""
    import numpy as np

    from latent.indexer.encoders import get_encoder, normalize

    glove = get_encoder("glove")
    assert glove.unknown_words("New qwxzq York") == ["qwxzq"]
    np.testing.assert_allclose(glove.encode(["new qwxzq york"]), glove.encode(["new york"]), atol=1e-6)
    ix = latent.create(tmp_path / "idx", encoder="glove")
    report = ix.add(["new qwxzq york", "qwxzq zzqqxw"])
    (skip,) = report.skip_examples()
    assert report.added == 1 and report.skipped == 1 and "vocabulary" in skip.reason and skip.line == 2
    out = run("search", ix.directory, "york qwxzq", "-k", "1")
    assert out.exit_code == 0 and "left out of the query: qwxzq" in out.stderr
    assert normalize(glove.encode(["york"]))[0] @ glove.encode(["york qwxzq"])[0] > 0.999


def test_a_csv_line_inside_an_unclosed_quote_is_reported_once(tmp_path):
    """A bad UTF-8 line inside the span of an unclosed quote was reported twice, out of line
    order: now it is named inside the one report of the span, and skips come in line order."""
    source = tmp_path / "in.csv"
    source.write_bytes(b'text,n\nbad \xff first,0\ngood one,1\n"broken quote,2\nbad \xff utf,3\nmore,4\nlast,5\n')
    skips = [item for item in latent.read_inputs([str(source)]) if isinstance(item, latent.Skip)]
    assert [(s.line, s.reason) for s in skips] == [
        (2, "not valid UTF-8"),
        (4, "1 fields, the header has 2 (lines 4-7: an unclosed quote?; line 5 not valid UTF-8)")]


def test_shell_completion_works_as_the_readme_says():
    import os
    import subprocess
    import sys
    from pathlib import Path

    latent_bin = Path(sys.executable).parent / "latent"
    script = subprocess.run([str(latent_bin)], env={**os.environ, "_LATENT_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=60)
    assert "_latent_completion" in script.stdout
    words = subprocess.run([str(latent_bin)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "_LATENT_COMPLETE": "bash_complete", "COMP_WORDS": "latent se",
                                "COMP_CWORD": "1"})
    assert {"plain,search", "plain,serve"} <= set(words.stdout.split())


def test_word_neighbours_are_frequent_words():
    """`latent words paris` put the crawl token "prohertrib" (rank 129,500) first; the demo's
    word lists showed tokens like "893-8241". The @words items carry their frequency rank."""
    out = run("words", "paris", "-k", "5", "--json")
    hits = __import__("json").loads(out.stdout)["hits"]
    assert [h["key"] for h in hits][0] == "france" and all(h["metadata"]["rank"] <= 100_000 for h in hits)
    every = __import__("json").loads(run("words", "paris", "-k", "1", "--json", "--max-rank", "0").stdout)["hits"]
    assert every[0]["key"] == "prohertrib" and every[0]["metadata"]["rank"] == 129_500
    from latent.search.words import neighbours

    shown = neighbours("phone", k=20, max_rank=50_000, words_only=True)
    assert len(shown) == 20 and all(h.metadata["rank"] <= 50_000 and h.key.isascii() for h in shown)
    assert not any(any(c.isdigit() for c in h.key) for h in shown)
    assert [h.rank for h in shown] == list(range(1, 21))


def test_skipped_lists_and_clears(tmp_path):
    """The skipped table is read and cleared from the CLI (it was only reachable with sqlite3);
    the same file added twice records each skip once."""
    import json

    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "king"}\n{"nope": 1}\n[1]\n{"text": "queen"}\n', encoding="utf-8")
    ix = latent.create(tmp_path / "idx", encoder="glove")
    for _ in range(2):
        assert run("add", ix.directory, source).exit_code == 0
    listed = json.loads(run("skipped", ix.directory, "--json").stdout)
    assert listed["total"] == 2 and sorted(r["line"] for r in listed["skipped"]) == [2, 3]
    assert "(1 of 2 shown" in run("skipped", ix.directory, "--limit", "1").stdout
    assert json.loads(run("skipped", ix.directory, "--source", "other.csv", "--json").stdout)["total"] == 0
    assert "Cleared 2 recorded skips" in run("skipped", ix.directory, "--clear").stdout
    assert ix.skipped() == ([], 0)


def test_image_labels_can_be_filtered(tmp_path):
    """The top-5 labels were stored as a list of {label, p} that no filter could reach, though
    the README said they could be filtered: label_names holds the names, label_p the cutoffs."""
    import skimage.data
    from PIL import Image

    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(skimage.data, name)()).save(tmp_path / f"{name}.png")
    ix = latent.create(tmp_path / "idx", encoder="efficientnet")
    ix.add(latent.read_inputs([str(tmp_path / f"{n}.png") for n in ("chelsea", "coffee", "rocket")]))
    meta = {row["key"]: row["metadata"] for row in ix.fetch(ix.ids()).values()}
    assert meta["chelsea.png"]["label_names"] == [x["label"] for x in meta["chelsea.png"]["labels"]]
    assert "tiger cat" in meta["chelsea.png"]["label_names"]
    cats = ix.similar(key="coffee.png", where="label_names = 'tiger cat'", k=5)
    assert [h.key for h in cats] == ["chelsea.png"]
    p = meta["chelsea.png"]["label_p"]["tiger_cat"]
    assert [h.key for h in ix.similar(key="coffee.png", where=f"label_p.tiger_cat >= {p}", k=5)] == ["chelsea.png"]
    assert ix.similar(key="coffee.png", where=f"label_p.tiger_cat > {p}", k=5) == []


def test_k_has_one_bound_in_the_cli_and_the_api(words):
    """The CLI allowed 10,000, the API 100,000 and the README said 100,000: one bound now."""
    from latent.search.query import MAX_K

    assert MAX_K == 100_000
    assert run("search", words.directory, "king", "-k", str(MAX_K)).exit_code == 0
    refused = run("search", words.directory, "king", "-k", str(MAX_K + 1))
    assert refused.exit_code == 2 and "1<=x<=100000" in refused.output
    with pytest.raises(latent.InputError, match="1 to 100,000"):
        words.search("king", k=MAX_K + 1)
