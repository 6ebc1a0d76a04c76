"""Cross-modal and image-space search on real photos: ConSE text->image, EfficientNet
image->image, and faces clustering, with the bundled models only."""

import numpy as np
import pytest
from PIL import Image

from latent.indexer import Index
from latent.indexer.builtin import DEMO_FACES, DEMO_PHOTOS, write_demo_photos
from latent.indexer.encoders import get_encoder
from latent.indexer.images import read_images
from latent.search import search, similar

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_demo_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def conse_index(photos, tmp_path_factory):
    index = Index.create(tmp_path_factory.mktemp("conse") / "idx", encoder="conse")
    report = index.add(read_images([str(photos)]))
    assert report.added == len(DEMO_PHOTOS) + 2 + DEMO_FACES and not report.skipped
    return index


@pytest.mark.parametrize("query, photo", [
    ("a cat", "chelsea.png"), ("a cup of coffee", "coffee.png"), ("a rocket", "rocket.png"),
    ("a kitten", "chelsea.png"), ("espresso", "coffee.png"), ("a temple", "china.jpg"),
])
def test_conse_text_queries_rank_the_right_photo_first(conse_index, query, photo):
    hits = search(conse_index, query, k=3)
    assert hits[0].key == photo, [(h.key, round(h.score, 3)) for h in hits]
    assert hits[0].score > hits[1].score


def test_conse_filters_on_labels_and_similar_by_image(conse_index, photos):
    hits = search(conse_index, "an animal", k=5, where="label in (tabby, 'tiger cat', 'Egyptian cat')")
    assert [h.key for h in hits] == ["chelsea.png"]
    by_file = similar(conse_index, image=photos / "coffee.png", k=1, include_self=True)
    assert by_file[0].key == "coffee.png" and by_file[0].score > 0.99
    # as for a key, the indexed photo with the same bytes is left out unless asked for
    assert "coffee.png" not in [h.key for h in similar(conse_index, image=photos / "coffee.png", k=5)]


def test_conse_text_vectors_are_minilm():
    conse, minilm = get_encoder("conse"), get_encoder("minilm")
    assert (conse.dim, conse.modalities) == (384, ("text", "image"))
    np.testing.assert_allclose(conse.encode(["a red car"]), minilm.encode(["a red car"]), atol=1e-6)


def test_efficientnet_puts_the_cat_nearer_animals_than_the_rocket(tmp_path):
    """Image->image in the CNN's feature space: other cat pictures before the rocket."""
    root = tmp_path / "pics"
    root.mkdir()
    cat = Image.fromarray(skdata.chelsea())
    cat.crop((0, 0, 300, 300)).save(root / "cat-left.png")
    cat.crop((151, 0, 451, 300)).resize((200, 200)).save(root / "cat-right.png")
    Image.fromarray(skdata.astronaut()).save(root / "astronaut.png")
    Image.fromarray(skdata.rocket()).save(root / "rocket.png")
    Image.fromarray(skdata.coffee()).save(root / "coffee.png")
    Image.fromarray(skdata.horse().astype(np.uint8) * 255).save(root / "horse-silhouette.png")
    index = Index.create(tmp_path / "idx", encoder="efficientnet")
    index.add(read_images([str(root)]))
    hits = similar(index, key="cat-left.png", k=5)
    order = [h.key for h in hits]
    assert order[0] == "cat-right.png"
    assert order.index("cat-right.png") < order.index("rocket.png")
    scores = {h.key: h.score for h in hits}
    assert scores["cat-right.png"] > scores["rocket.png"] + 0.3


def test_lfw_faces_cluster_under_efficientnet(tmp_path):
    """A face's nearest neighbours are faces far more often than the other photos (measured)."""
    faces = skdata.lfw_subset()[:100]  # 25x25 grey faces, values in [0, 1]
    root = tmp_path / "mixed"
    root.mkdir()
    for i, face in enumerate(faces):
        Image.fromarray((face * 255).astype(np.uint8)).resize((100, 100)).save(root / f"face-{i:03d}.png")
    rng = np.random.default_rng(0)
    others = []
    for name in ("rocket", "coffee", "chelsea", "hubble_deep_field", "coins", "immunohistochemistry",
                 "retina", "clock", "page", "brick", "grass", "gravel", "moon", "text"):
        pixels = np.asarray(getattr(skdata, name)())
        for j in range(7):  # distinct grey crops, like the faces
            h, w = pixels.shape[:2]
            side = int(min(h, w) * rng.uniform(0.3, 0.7))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(pixels[y:y + side, x:x + side]).convert("L").resize((100, 100))
            crop.save(root / f"other-{name}-{j}.png")
            others.append(f"other-{name}-{j}.png")
    index = Index.create(tmp_path / "idx", encoder="efficientnet")
    report = index.add(read_images([str(root)]))
    assert report.added == len(faces) + len(others)
    k = 10
    face_share = []
    for i in range(0, len(faces), 5):
        hits = similar(index, key=f"face-{i:03d}.png", k=k)
        face_share.append(np.mean([h.key.startswith("face-") for h in hits]))
    base_rate = (len(faces) - 1) / (len(faces) + len(others) - 1)
    measured = float(np.mean(face_share))
    print(f"faces among a face's {k} nearest: {measured:.3f} (base rate {base_rate:.3f})")
    assert measured >= 0.9 and measured > base_rate + 0.3


def test_an_index_made_with_the_first_default_keeps_its_settings(tmp_path, photos):
    """conse's default changed (T=10, four prompts and WordNet definitions); an index whose
    recorded version names the first default (T=5, 'an image of {}') keeps making its vectors."""
    from latent.indexer.encoders import conse as conse_module

    index = Index.create(tmp_path / "new", encoder="conse")
    assert (index.encoder.top_t, index.encoder.prompts, index.encoder.definitions) == (
        conse_module.TOP_T, conse_module.PROMPTS, True)
    assert index.manifest["encoder_version"] == index.encoder.version
    index.close()

    first = index.manifest["encoder_version"].split("|", 2)[2]  # text and cnn versions, as before
    old_version = f"T5|an image of {{}}|{first}"
    old = Index.create(tmp_path / "old", encoder="conse")
    old.store.set_manifest(encoder_version=old_version)
    old.close()
    reopened = Index.open(tmp_path / "old")
    enc = reopened.encoder
    assert (enc.top_t, enc.prompts, enc.definitions, enc.version) == (5, ("an image of {}",), False, old_version)
    # its image vectors are the first default's: the top-5 classes' "an image of {}" embeddings
    cat = Image.open(photos / "chelsea.png").convert("RGB")
    _, logits = enc.cnn.forward(np.stack([enc.preprocess(cat)]))
    top5 = np.argsort(-logits[0])[:5]
    expected = get_encoder("minilm").encode([f"an image of {enc.cnn.labels[c]}" for c in top5])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.class_vectors[top5], expected, atol=1e-5)
    p = np.exp(logits[0, top5] - logits[0].max())
    mean = (p / p.sum()) @ expected
    vectors, _ = enc.encode_images([cat])
    np.testing.assert_allclose(vectors[0], mean / np.linalg.norm(mean), atol=1e-5)
    # and the new default's class vectors differ from them
    assert not np.allclose(index.encoder.class_vectors[top5], enc.class_vectors[top5], atol=1e-3)
    reopened.close()


def test_text_queries_of_a_conse_index_do_not_load_the_cnn(tmp_path):
    """Only images need efficientnet: a conse text search leaves it unloaded."""
    import subprocess
    import sys

    Index.create(tmp_path / "idx", encoder="conse").add(["a red car", "a cup of coffee"]).added
    code = ("import latent, latent.indexer.encoders as e; c = latent.open(%r); "
            "hits = c.search('coffee', k=1); "
            "print(hits[0].key, any(k.startswith('efficientnet@') for k in e._LOADED), "
            "c.encoder._cnn is None)" % str(tmp_path / "idx"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == ["False", "True"], out
