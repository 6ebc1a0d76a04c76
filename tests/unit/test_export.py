"""`latent export` (Parquet, JSON Lines, NumPy) and Parquet inputs: a text, key, image-path
or vector column; an export goes back in with `latent add` and gives the same search results;
vectors of another dimension are refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from latent.cli import cli
from latent.indexer import Index, Record, read_inputs
from latent.indexer.errors import EncoderMismatch
from latent.search.query import search


@pytest.fixture
def index(tmp_path, sentences):
    """The demo sentences in a `fake` index: keys = ids, metadata = topic (and a nested value),
    plus a word and an item added as a bare vector."""
    with Index.create(tmp_path / "src", encoder="fake", index_type="flat") as index:
        index.add([Record(text=s["text"], key=s["id"], metadata={"topic": s["topic"], "n": i, "tags": {"a": [i]}})
                   for i, s in enumerate(sentences)])
        index.add([Record(text="cat", key="cat", kind="word")])
        index.add_vectors(["v1"], np.arange(1, 33, dtype=np.float32)[None, :], metadata=[{"made": "elsewhere"}])
        yield index


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _all(index):
    ids = index.ids()
    rows = index.fetch(ids)
    return {rows[i]["key"]: (rows[i]["kind"], rows[i]["text"], rows[i]["metadata"], v)
            for i, v in zip(ids.tolist(), index.vectors_of(ids))}


def test_parquet_round_trip_gives_the_same_items_and_search_results(index, tmp_path):
    out = tmp_path / "out.parquet"
    doc = json.loads(_run("export", index.directory, "-o", out, "--json").stdout)
    assert doc["count"] == index.count() == 402 and doc["dim"] == 32
    _run("create", tmp_path / "copy", "--encoder", "fake", "--index", "flat")
    added = json.loads(_run("add", tmp_path / "copy", out, "--json").stdout)
    assert added["added"] == 402 and added["skipped"] == 0
    with Index.open(tmp_path / "copy") as copy:
        before, after = _all(index), _all(copy)
        assert sorted(before) == sorted(after)
        for key, (kind, text, metadata, vector) in before.items():
            assert after[key][:3] == (kind, text, metadata), key
            np.testing.assert_allclose(after[key][3], vector, atol=1e-6)
        for query in ("planets and stars", "bread recipe", "cat"):
            assert [(h.key, round(h.score, 5), h.metadata, h.text) for h in search(copy, query, k=10)] == \
                   [(h.key, round(h.score, 5), h.metadata, h.text) for h in search(index, query, k=10)]
        again = json.loads(_run("add", tmp_path / "copy", out, "--json").stdout)  # nothing changed: nothing written
        assert again["unchanged"] == 402 and again["batches"] == 0


def test_jsonl_and_npy_exports_hold_every_item(index, tmp_path):
    _run("export", index.directory, "-o", tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    items = _all(index)
    assert {r["key"] for r in rows} == set(items) and len(rows) == len(items)
    for r in rows:
        assert (r["kind"], r["text"], r["metadata"]) == items[r["key"]][:3]
        np.testing.assert_allclose(r["vector"], items[r["key"]][3], atol=1e-7)
    _run("export", index.directory, "-o", tmp_path / "out.npy")
    vectors = np.load(tmp_path / "out.npy")
    sidecar = [json.loads(line) for line in (tmp_path / "out.items.jsonl").read_text().splitlines()]
    assert vectors.shape == (len(items), 32) and vectors.dtype == np.float32 and len(sidecar) == len(items)
    for r, v in zip(sidecar, vectors):
        np.testing.assert_array_equal(v, items[r["key"]][3])
    bad = CliRunner().invoke(cli, ["export", str(index.directory), "-o", str(tmp_path / "out.csv")])
    assert bad.exit_code == 1 and "name it .parquet, .jsonl or .npy" in bad.output


def test_vectors_made_elsewhere_are_stored_and_a_wrong_dimension_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, 16)).astype(np.float32)
    table = pa.table({"id": [f"k{i}" for i in range(50)], "v": [v.tolist() for v in vectors],
                      "year": list(range(2000, 2050))})
    pq.write_table(table, tmp_path / "made.parquet")
    _run("create", tmp_path / "v16", "--encoder", "vectors:16", "--index", "flat")
    doc = json.loads(_run("add", tmp_path / "v16", tmp_path / "made.parquet", "--vector-field", "v", "--key-field", "id",
                          "--json").stdout)
    assert doc["added"] == 50
    with Index.open(tmp_path / "v16") as v16:
        got = v16.vector_of("k7")
        np.testing.assert_allclose(got, vectors[7] / np.linalg.norm(vectors[7]), atol=1e-6)
        assert v16.fetch([v16.lookup(["k7"])["k7"][0]]).popitem()[1]["metadata"] == {"id": "k7", "year": 2007}
    _run("create", tmp_path / "v32", "--encoder", "fake", "--index", "flat")
    refused = CliRunner().invoke(cli, ["add", str(tmp_path / "v32"), str(tmp_path / "made.parquet"), "--vector-field",
                                       "v", "--key-field", "id"])
    assert refused.exit_code == 1 and "16-d vectors" in refused.output and "nothing was added" in refused.output
    with Index.open(tmp_path / "v32") as v32:
        assert v32.count() == 0
        with pytest.raises(EncoderMismatch):  # the API refuses it too, before its batch is stored
            v32.add(read_inputs([str(tmp_path / "made.parquet")], vector_field="v"))
        assert v32.count() == 0


def test_parquet_text_rows_and_globs_read_like_csv_rows(tmp_path, sentences):
    parts = tmp_path / "parts"
    parts.mkdir()
    for n in range(3):
        chunk = sentences[n * 10:(n + 1) * 10]
        pq.write_table(pa.table({"id": [s["id"] for s in chunk], "body": [s["text"] for s in chunk],
                                 "topic": [s["topic"] for s in chunk]}), parts / f"part-{n}.parquet")
    pq.write_table(pa.table({"id": ["x1", None, "x3"], "body": ["fine", "no key", None]}), parts / "part-9.parquet")
    items = list(read_inputs([str(parts / "part-*.parquet")], text_field="body", key_field="id"))
    records = [i for i in items if isinstance(i, Record)]
    skips = [i for i in items if not isinstance(i, Record)]
    assert [r.key for r in records] == [s["id"] for s in sentences[:30]] + ["x1"]
    assert records[0].metadata == {"id": sentences[0]["id"], "topic": sentences[0]["topic"]}
    assert [(s.line, s.reason) for s in skips] == [(2, "no key field 'id'"), (3, "no field 'body' (text_field "
                                                                              "chooses the text column)")]
    assert [r.key for r in read_inputs([str(parts)], fmt="parquet", text_field="body", key_field="id")
            if isinstance(r, Record)] == [r.key for r in records]


def test_add_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch, sentences):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    (tmp_path / "in.txt").write_text("\n".join(s["text"] for s in sentences[:5]) + "\n")
    _run("create", tmp_path / "idx", "--encoder", "fake")
    result = CliRunner().invoke(cli, ["add", str(tmp_path / "idx"), str(tmp_path / "in.txt"), "--ray"])
    assert result.exit_code == 1
    assert "pip install 'latent-search[ray]'" in result.output and "--ray" in result.output
    (tmp_path / "more.txt").write_text("one more line\n")
    wrong = CliRunner().invoke(cli, ["add", str(tmp_path / "idx"), "--ray", str(tmp_path / "in.txt"),
                                     str(tmp_path / "more.txt")])
    assert wrong.exit_code == 2 and "give --ray after the inputs" in wrong.output
