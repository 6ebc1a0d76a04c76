"""The object API as the README shows it, on the tests' `fake` encoder (no model): latent.create
and latent.open, add (texts, dicts, Records, keys and metadata; upserts), add_vectors, search with
filters, similar, delete, info, check, interpolate and analogy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import latent
from conftest import FakeEncoder

FAKE = FakeEncoder()


@pytest.fixture
def ix(tmp_path):
    index = latent.create(tmp_path / "notes", encoder="fake")
    yield index
    index.close()


def keys(hits) -> list[str]:
    return [h.key for h in hits]


def test_the_readme_example(tmp_path):
    ix = latent.create(tmp_path / "notes", encoder="fake")
    assert isinstance(ix, latent.Collection)
    report = ix.add(["first text", "second text"])
    assert (report.added, report.replaced, report.unchanged, report.skipped) == (2, 0, 0, 0)
    rows = [{"year": 2001}, {"year": 2010}, {"year": 1990}]
    vectors = FAKE.encode(["query about cats", "query about dogs", "an old query"])
    assert ix.add_vectors(["cats", "dogs", "old"], vectors, metadata=rows).added == 3

    hits = ix.search("query", k=10, where="year >= 2000")
    assert sorted(keys(hits)) == ["cats", "dogs"]
    assert [h.rank for h in hits] == [1, 2] and hits[0].score >= hits[1].score
    assert {h.key: h.metadata["year"] for h in hits} == {"cats": 2001, "dogs": 2010}
    everything = ix.search("query", k=10)
    assert len(everything) == 5 and keys(everything)[0] in {"cats", "dogs", "old"}  # they share "query"

    similar = ix.similar(key="cats")
    assert "cats" not in keys(similar) and keys(similar)[0] == "dogs"  # "query about" in common
    Image.new("RGB", (32, 32), (200, 120, 40)).save(tmp_path / "cat.png")
    with pytest.raises(latent.EncoderMismatch, match="not images"):  # a text encoder
        ix.similar(image=tmp_path / "cat.png")

    assert ix.delete(["old", "never-added"]) == (1, ["never-added"])
    info = ix.info()
    assert (info["count"], info["encoder"], info["dim"], info["metric"]) == (4, "fake", 32, "ip")
    check = ix.check()
    assert check["ok"] is True, check
    steps = latent.interpolate(ix, "cats", "dogs", steps=5)
    assert steps[0].key == "cats" and steps[-1].key == "dogs"
    assert all(isinstance(s, latent.Step) for s in steps)
    ix.close()

    again = latent.open(tmp_path / "notes")
    assert isinstance(again, latent.Collection) and again.count() == 4
    assert keys(again.search("query", k=10, where="year >= 2000")) == keys(hits)
    again.close()


def test_texts_are_keyed_by_content_and_readding_changes_nothing(ix):
    first = ix.add(["alpha beta", "gamma delta"])
    assert first.added == 2
    assert ix.add(["alpha beta", "gamma delta"]).unchanged == 2
    assert ix.count() == 2
    hit = ix.search("alpha", k=1)[0]
    assert hit.text == "alpha beta" and hit.kind == "text"


def test_dicts_records_keys_and_metadata(ix):
    ix.add([{"text": "red apple", "key": "apple", "metadata": {"colour": "red", "n": 1}},
            latent.Record(text="yellow banana", key="banana", metadata={"colour": "yellow", "n": 2})])
    ix.add(["green pear"], keys=["pear"], metadata=[{"colour": "green", "n": 3}])
    assert ix.count() == 3
    assert keys(ix.search("apple", k=3, where="colour = red")) == ["apple"]
    assert sorted(keys(ix.search("fruit", k=3, where="n >= 2"))) == ["banana", "pear"]
    assert keys(ix.search("fruit", k=3, where="colour in (red, green) and n < 3")) == ["apple"]
    with pytest.raises(latent.InputError, match="dict item"):
        ix.add([{"txt": "typo"}])
    with pytest.raises(latent.InputError, match="not a single str"):
        ix.add("a bare string")


def test_upserts_replace_texts_and_update_metadata_in_place(ix):
    ix.add(["old text"], keys=["k"], metadata=[{"v": 1}])
    report = ix.add(["old text"], keys=["k"], metadata=[{"v": 2}])
    assert report.metadata_updated == 1 and report.replaced == 0
    assert ix.search("old", k=1)[0].metadata == {"v": 2}
    report = ix.add(["new words entirely"], keys=["k"], metadata=[{"v": 3}])
    assert report.replaced == 1 and ix.count() == 1
    hit = ix.search("entirely", k=1)[0]
    assert (hit.key, hit.text, hit.metadata) == ("k", "new words entirely", {"v": 3})
    assert hit.score == pytest.approx(float(FAKE.encode(["entirely"])[0] @ FAKE.encode(["new words entirely"])[0]),
                                      abs=1e-5)


def test_search_by_vector_expression_and_min_score(ix):
    ix.add(["king crown", "queen crown", "apple pie"], keys=["king", "queen", "pie"])
    vector = FAKE.encode(["crown"])[0]
    assert set(keys(ix.search(vector, k=2))) == {"king", "queen"}
    assert [keys(row) for row in ix.search_vectors(np.stack([vector, vector]), k=2)] == [keys(ix.search(vector, k=2))] * 2
    assert keys(ix.search("pie", k=3, min_score=0.5)) == ["pie"]
    assert "king" not in keys(ix.search(expr="king - queen", k=3))
    with pytest.raises(latent.InputError):
        ix.search()
    with pytest.raises(latent.InputError):
        ix.search("text", expr="king")


def test_analogy_in_a_space_of_precomputed_vectors(tmp_path):
    ix = latent.create(tmp_path / "words", encoder="vectors:4")
    space = {"man": [1, 0, 0, 0.1], "king": [1, 1, 0, 0.1], "woman": [0, 0, 1, 0.1], "queen": [0, 1, 1, 0.1],
             "apple": [0, 0, 0, 1]}
    ix.add_vectors(list(space), np.array(list(space.values()), dtype=np.float32))
    hits = latent.analogy("man", "king", "woman", index=ix, k=3)
    assert keys(hits)[0] == "queen" and not {"man", "king", "woman"} & set(keys(hits))
    with pytest.raises(latent.EncoderMismatch, match="cannot encode text"):
        ix.search("queen")
    ix.close()


def test_errors_are_typed(ix, tmp_path):
    with pytest.raises(latent.IndexExists):
        latent.create(ix.directory, encoder="fake")
    with pytest.raises(latent.IndexNotFound):
        latent.open(tmp_path / "nowhere")
    with pytest.raises(latent.EncoderUnavailable, match="unknown encoder"):
        latent.create(tmp_path / "other", encoder="no-such-encoder")
    with pytest.raises(latent.EncoderMismatch):
        ix.add_vectors(["x"], np.ones((1, 5), dtype=np.float32))
    with pytest.raises(latent.FilterError):
        ix.search("x", where="year >=")
