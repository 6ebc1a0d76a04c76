"""The README's object API on the real bundled models: a minilm index written and searched
through `latent.create/open`, `similar(image=...)` on an EfficientNet index of real photos,
and `latent.analogy` / `latent.interpolate` on the built-in GloVe words (@words, built once in
the session's cache directory)."""

from __future__ import annotations

import pytest
from PIL import Image

import latent
from latent.indexer.builtin import write_demo_photos
from latent.indexer.images import read_images

PAPERS = {"nets": ("neural networks learn patterns from training data", 2015),
          "vaccine": ("a vaccine trains the immune system to fight a virus", 2005),
          "crash": ("the stock market fell sharply as investors sold shares", 1995)}


def keys(hits) -> list[str]:
    return [h.key for h in hits]


def test_the_readme_example_on_minilm(tmp_path):
    ix = latent.create(tmp_path / "notes", encoder="minilm")
    assert ix.add(["first text", "second text"]).added == 2
    texts = [text for text, _ in PAPERS.values()]
    vectors = ix.encoder.encode(texts)
    ix.add_vectors(list(PAPERS), vectors, metadata=[{"year": year} for _, year in PAPERS.values()], texts=texts)

    hits = ix.search("machine learning", k=10, where="year >= 2000")
    assert keys(hits) == ["nets", "vaccine"]
    assert hits[0].metadata == {"year": 2015} and hits[0].text == PAPERS["nets"][0]
    assert keys(ix.search("shares and stock prices", k=1)) == ["crash"]
    assert keys(ix.similar(key="vaccine", k=1, where="year < 2000")) == ["crash"]

    assert ix.delete(["crash", "nope"]) == (1, ["nope"])
    info = ix.info()
    assert (info["count"], info["encoder"], info["dim"]) == (4, "minilm", 384)
    assert ix.check()["ok"]
    path = latent.interpolate(ix, "nets", "vaccine", steps=4)
    assert (path[0].key, path[-1].key) == ("nets", "vaccine")
    ix.close()
    with latent.open(tmp_path / "notes") as again:
        assert keys(again.search("machine learning", k=10, where="year >= 2000")) == ["nets", "vaccine"]


def test_similar_to_an_image_file(tmp_path):
    photos = write_demo_photos(tmp_path / "photos")
    ix = latent.create(tmp_path / "pics", encoder="efficientnet")
    report = ix.add(read_images([str(photos)]))
    assert report.added >= 5 and not report.skipped
    with Image.open(photos / "chelsea.png") as cat:  # a crop the index has never seen
        width, height = cat.size
        cat.crop((width // 10, height // 10, width - width // 10, height - height // 10)).save(tmp_path / "crop.png")
    hits = ix.similar(image=tmp_path / "crop.png", k=3)
    assert hits[0].key == "chelsea.png" and hits[0].kind == "image" and hits[0].score > hits[1].score
    with pytest.raises(latent.EncoderMismatch, match="not text"):
        ix.search("a cat")
    ix.close()


def test_analogy_and_interpolate_on_the_builtin_words():
    hits = latent.analogy("man", "king", "woman")
    assert keys(hits)[0] == "queen" and not {"man", "king", "woman"} & set(keys(hits))
    path = latent.interpolate("@words", "hot", "cold", steps=10)
    assert [step.key for step in path] == ["hot", "cool", "cold"]
