"""Near-duplicates, collapsing and clusters on real data: resized, cropped and re-encoded (JPEG
quality 20) copies of the photos bundled with scikit-image under the efficientnet encoder, and
repeated licence paragraphs among the demo sentences under minilm."""

from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest
import skimage.data
from PIL import Image

import latent

DISTINCT = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
            "camera", "coins", "page", "horse"]
COPIED = ["astronaut", "coffee", "chelsea", "rocket"]

GPL = ("This program is free software: you can redistribute it and/or modify it under the terms of the GNU "
       "General Public License as published by the Free Software Foundation, either version 3 of the License, "
       "or (at your option) any later version.")
MIT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
       "associated documentation files, to deal in the Software without restriction.")
PLANTED_TEXTS = {  # key: text; the groups are gpl-*, mit-*
    "gpl-a": GPL, "gpl-b": GPL.replace("3", "2"), "gpl-c": "  " + GPL.upper() + "\n",
    "mit-a": MIT, "mit-b": textwrap.fill(MIT.replace("Software", "software"), 72),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An efficientnet index of 11 distinct bundled photos and, for 4 of them, a half-size copy,
    a copy cropped by 10% on each side and a JPEG at quality 20."""
    folder = tmp_path_factory.mktemp("pics")
    for name in DISTINCT:
        picture = getattr(skimage.data, name)()
        Image.fromarray(picture).convert("RGB").save(folder / f"{name}.png")
    for name in COPIED:
        im = Image.open(folder / f"{name}.png")
        w, h = im.size
        im.resize((w // 2, h // 2)).save(folder / f"{name}_small.png")
        im.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(folder / f"{name}_crop.png")
        im.save(folder / f"{name}_q20.jpg", quality=20)
    ix = latent.create(tmp_path_factory.mktemp("photos") / "idx", encoder="efficientnet")
    report = ix.add(latent.read_inputs([str(folder)]))
    assert report.added == len(DISTINCT) + 3 * len(COPIED) and report.skipped == 0
    yield ix
    ix.close()


def test_dupes_finds_exactly_the_planted_copies_of_photos(photos):
    groups = photos.duplicates(threshold=0.8)
    found = sorted(sorted(m.key for m in g.members) for g in groups)
    planted = sorted(sorted([f"{n}.png", f"{n}_small.png", f"{n}_crop.png", f"{n}_q20.jpg"]) for n in COPIED)
    assert found == planted  # every copy found, and no two distinct photos merged
    for g in groups:
        assert g.representative.score == pytest.approx(1.0, abs=1e-5)
        assert all(m.score >= 0.7 for m in g.members) and g.min_score >= 0.8
        assert g.representative.kind == "image" and g.representative.metadata["width"] > 0
    # a filter narrows the candidates: without the JPEGs, groups of three
    narrowed = photos.duplicates(threshold=0.8, where="format != JPEG")
    assert sorted(g.size for g in narrowed) == [3, 3, 3, 3]
    assert photos.duplicates(threshold=0.999) == []


def test_photo_similar_with_collapse_folds_the_copies(photos):
    plain = photos.similar(key="camera.png", k=6)
    collapsed = photos.similar(key="camera.png", k=6, collapse=0.8)
    assert len(collapsed) == 6 and [h.rank for h in collapsed] == list(range(1, 7))
    stems = [h.key.split("_")[0].split(".")[0] for h in collapsed]
    assert len(set(stems)) == 6  # six different photos, each copy folded into its best-ranked one
    assert sum(len(h.folded) for h in collapsed) >= len(plain) - len({k.key.split("_")[0].split(".")[0]
                                                                       for k in plain})


@pytest.fixture(scope="module")
def paragraphs(tmp_path_factory, sentence_index_dir):
    """The demo sentences (minilm) plus repeated licence paragraphs: copies differing in case,
    spacing and line wrapping, and in the licence version."""
    directory = tmp_path_factory.mktemp("paragraphs") / "idx"
    shutil.copytree(sentence_index_dir, directory)
    ix = latent.open(directory)
    ix.add(list(PLANTED_TEXTS.values()), keys=list(PLANTED_TEXTS), metadata=[{"topic": "licence"}] * 5)
    yield ix
    ix.close()


def test_dupes_finds_exactly_the_repeated_paragraphs(paragraphs):
    groups = paragraphs.duplicates(threshold=0.9)
    assert sorted(sorted(m.key for m in g.members) for g in groups) == [["gpl-a", "gpl-b", "gpl-c"],
                                                                      ["mit-a", "mit-b"]]
    gpl = next(g for g in groups if g.size == 3)
    assert gpl.representative.key in ("gpl-a", "gpl-b")  # the most central, not the shouted copy
    hits = paragraphs.search("free software licence terms", k=3)
    assert {h.key for h in hits} <= set(PLANTED_TEXTS) and len({h.key[:3] for h in hits}) <= 2
    distinct = paragraphs.search("free software licence terms", k=3, collapse=0.9)
    assert [h.key[:3] for h in distinct[:2]] in (["gpl", "mit"], ["mit", "gpl"])
    assert sorted(k[:3] for h in distinct[:2] for k in h.folded) == ["gpl", "gpl", "mit"]
    assert not distinct[2].key.startswith(("gpl", "mit"))


def test_cluster_stores_a_field_that_maps_and_filters(paragraphs):
    before = paragraphs.generation()
    result = paragraphs.cluster(k=20, field="cluster20", seed=1)
    assert paragraphs.generation() == before + 1 and result.items == paragraphs.count() == 405
    assert sum(c.size for c in result.clusters) == 405
    assert [c.size for c in result.clusters] == sorted((c.size for c in result.clusters), reverse=True)
    # the demo sentences come in 20 topics of 20: a cluster's items mostly share a topic, far more
    # than the same cluster sizes drawn at random would
    rows = {h.key: h.metadata for h in paragraphs.items(limit=None)}
    topics = np.array([m["topic"] for m in rows.values()])

    def purity(labels):
        return np.mean([np.unique(topics[labels == c], return_counts=True)[1].max() / (labels == c).sum()
                        for c in np.unique(labels)])

    labels = np.array([m["cluster20"] for m in rows.values()])
    chance = purity(np.random.default_rng(0).permutation(labels))
    assert purity(labels) > 0.5 and purity(labels) > 3 * chance
    licence = {rows[k]["cluster20"] for k in PLANTED_TEXTS}
    assert len(licence) <= 2  # the licence paragraphs stay together
    assert all(c.words for c in result.clusters) and all(len(c.central) == 5 for c in result.clusters if c.size >= 5)
    assert len(paragraphs.search("law", k=500, where="cluster20 = 0")) == result.clusters[0].size
    from latent.search.map_render import colouring
    from latent.search.maps import compute_map
    colours = colouring(compute_map(paragraphs, sample=1000), "cluster20")
    assert colours.kind == "categorical" and [c[0] for c in colours.categories] == [str(i) for i in range(20)]
