"""clip:<arch>/<pretrained>: an open_clip checkpoint saved here loads back through the users'
path with the same weights and vectors; texts and real photos give unit float32 vectors; weights
that are neither on disk nor downloadable are a clear error naming the offline alternative.

The model is ViT-S-32-alt, open_clip's smallest built-in architecture (43 M parameters, 256-d),
randomly initialised: nothing is downloaded."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from latent.indexer.encoders import clip
from latent.indexer.encoders.clip import load_clip, parse_spec
from latent.indexer.errors import EncoderUnavailable

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

ARCH = "ViT-S-32-alt"
DIM = 256
TEXTS = ["a photo of a cat", "a cup of coffee on a table", "a rocket on the launch pad", "a photo of a cat"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A randomly initialised ViT-S-32-alt, its eval transform and tokenizer, saved as a plain state dict."""
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms(ARCH)
    model.eval()
    directory = tmp_path_factory.mktemp("clip")
    state = model.state_dict()
    torch.save(state, directory / "plain.pt")
    return {"model": model, "transform": transform, "tokenizer": open_clip.get_tokenizer(ARCH),
            "state": state, "dir": directory}


@pytest.fixture(scope="module")
def encoder(reference):
    # an absolute path: ViT-S-32-alt//tmp/.../plain.pt
    return load_clip(f"{ARCH}/{reference['dir'] / 'plain.pt'}")


@pytest.fixture(scope="module")
def photos():
    from PIL import Image
    from skimage import data

    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("chelsea", "coffee", "rocket")]


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection attempt is recorded and refused."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache and ~/.cache/clip, whatever this machine has cached."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _reference_vectors(reference, texts, images):
    model = reference["model"]
    with torch.inference_mode():
        t = model.encode_text(reference["tokenizer"](texts)).numpy()
        i = model.encode_image(torch.stack([reference["transform"](im) for im in images])).numpy()
    return (t / np.linalg.norm(t, axis=1, keepdims=True), i / np.linalg.norm(i, axis=1, keepdims=True))


def test_checkpoint_loads_back_with_the_same_weights(reference, encoder):
    assert encoder.name == f"clip:{ARCH}/{reference['dir'] / 'plain.pt'}"
    assert (encoder.dim, encoder.modalities) == (DIM, ("text", "image"))
    assert ARCH in encoder.version and "plain.pt" in encoder.version
    loaded = encoder.model.state_dict()
    assert loaded.keys() == reference["state"].keys()
    for key, tensor in reference["state"].items():
        assert torch.equal(loaded[key], tensor), key


def test_vectors_match_the_original_model(reference, encoder, photos):
    want_text, want_images = _reference_vectors(reference, TEXTS, photos)
    np.testing.assert_allclose(encoder.encode(TEXTS), want_text, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_images(photos)[0], want_images, atol=1e-5)


def test_text_vectors_are_unit_float32_and_deterministic(encoder):
    v = encoder.encode(TEXTS)
    assert v.dtype == np.float32 and v.shape == (len(TEXTS), DIM)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[3])  # the same text twice in one batch
    np.testing.assert_array_equal(encoder.encode(TEXTS), v)  # and again
    np.testing.assert_allclose(encoder.encode(TEXTS[:1])[0], v[0], atol=1e-5)  # alone
    assert not np.allclose(v[0], v[1])
    assert encoder.encode([]).shape == (0, DIM)


def test_real_photos(encoder, photos):
    x = encoder.preprocess(photos[0])
    assert x.dtype == np.float32 and x.shape == (3, 224, 224)
    v, metadata = encoder.encode_images(photos)
    assert v.dtype == np.float32 and v.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert metadata == [{}, {}, {}]
    np.testing.assert_array_equal(encoder.encode_images(photos)[0], v)
    assert not np.allclose(v[0], v[1]) and not np.allclose(v[1], v[2])
    # a stacked batch from `preprocess` (the worker-thread path) gives the same vectors
    batch = np.stack([encoder.preprocess(p) for p in photos])
    np.testing.assert_allclose(encoder.encode_preprocessed(batch)[0], v, atol=1e-6)


def test_preprocess_is_thread_safe(encoder, photos):
    serial = [encoder.preprocess(p) for p in photos]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(encoder.preprocess, photos * 8))
    for i, x in enumerate(parallel):
        np.testing.assert_array_equal(x, serial[i % len(photos)])


def test_training_checkpoint_and_safetensors_forms(reference):
    """open_clip's training checkpoints ({"state_dict": ...}, `module.` prefixes from DDP) and .safetensors."""
    from safetensors.torch import save_file

    state = reference["state"]
    training = reference["dir"] / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "test", "state_dict": {f"module.{k}": v for k, v in state.items()}}, training)
    safe = reference["dir"] / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
    for path in (training, safe):
        loaded = load_clip(f"{ARCH}/{path}").model.state_dict()
        for key in ("text_projection", "visual.proj", "token_embedding.weight", "visual.conv1.weight", "logit_scale"):
            assert torch.equal(loaded[key], state[key]), (path.name, key)


def test_loaded_once_per_spec(reference, encoder):
    assert load_clip(f"{ARCH}/{reference['dir'] / 'plain.pt'}") is encoder


def test_spec_syntax(reference, monkeypatch):
    path = reference["dir"] / "plain.pt"
    assert parse_spec(f"{ARCH}/{path}") == clip.ClipSpec(ARCH, checkpoint=path.resolve())  # arch//abs/path
    monkeypatch.chdir(reference["dir"])
    assert parse_spec(f"{ARCH}/./plain.pt").checkpoint == path.resolve()
    assert parse_spec(f"{ARCH}/plain.pt").checkpoint == path.resolve()
    assert parse_spec("vit-b-32/LAION2B-S34B-B79K") == clip.ClipSpec("ViT-B-32", tag="laion2b_s34b_b79k")
    assert parse_spec("ViT-B-32/openai").pretrained == "openai"


def test_uncached_tag_offline_names_conse(monkeypatch, empty_hub_cache, no_network):
    from huggingface_hub import constants

    offline_before = constants.HF_HUB_OFFLINE
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailable, match=r"HF_HUB_OFFLINE is set.*bundled encoder conse"):
        load_clip("ViT-B-32/laion2b_s34b_b79k")
    assert no_network == []
    assert constants.HF_HUB_OFFLINE == offline_before  # the offline switch is put back


def test_uncached_tag_with_unreachable_hub_fails_at_once(monkeypatch, empty_hub_cache, no_network):
    """Not offline by configuration, but the hub cannot be reached: no download, no retries."""
    probes = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(clip, "_hub_reachable", lambda timeout=3.0: probes.append(1) or False)
    with pytest.raises(EncoderUnavailable, match=r"hub cannot be reached.*bundled encoder conse"):
        load_clip("ViT-B-32/laion2b_s34b_b79k")
    assert probes == [1] and no_network == []


def test_unknown_arch():
    with pytest.raises(EncoderUnavailable, match=r"unknown open_clip architecture .ViT-Q-99.*ViT-B-32, ViT-B-16"):
        load_clip("ViT-Q-99/openai")
    with pytest.raises(EncoderUnavailable, match="unknown open_clip architecture"):
        load_clip("/some/checkpoint.pt")  # the arch is missing


def test_missing_checkpoint_and_bad_tags(tmp_path):
    with pytest.raises(EncoderUnavailable, match=r"checkpoint file not found.*missing\.pt.*conse"):
        load_clip(f"{ARCH}/{tmp_path / 'missing.pt'}")
    with pytest.raises(EncoderUnavailable, match=r"neither a pretrained tag of ViT-B-32.*laion2b_s34b_b79k.*conse"):
        load_clip("ViT-B-32/laion2b_typo")
    with pytest.raises(EncoderUnavailable, match="names no weights.*openai"):
        load_clip("ViT-B-32")


def test_checkpoint_of_another_arch(reference):
    with pytest.raises(EncoderUnavailable, match="does not load into open_clip architecture ViT-S-32"):
        load_clip(f"ViT-S-32/{reference['dir'] / 'plain.pt'}")


def test_cached_tag_loads_offline_with_the_tags_preprocessing(reference, monkeypatch, tmp_path, no_network):
    """A pretrained tag whose weights are in the local Hugging Face cache loads without touching the
    network, with the preprocessing and activation the tag declares. (ViT-S-32-alt has no tags, so
    the test registers one in open_clip's table, pointing at a hub repo laid out in a temporary cache.)"""
    from huggingface_hub import constants
    from open_clip.transform import Normalize

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--test-org--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "open_clip_pytorch_model.bin").symlink_to(reference["dir"] / "plain.pt")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, ARCH, {"testtag": {
        "url": "", "hf_hub": "test-org/tiny-clip/", "mean": mean, "std": std,
        "interpolation": "bilinear", "resize_mode": "shortest", "quick_gelu": True}})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(clip, "_hub_reachable", lambda timeout=3.0: pytest.fail("cached weights need no hub"))

    enc = load_clip(f"{ARCH}/TestTag")
    assert enc.spec == clip.ClipSpec(ARCH, tag="testtag") and "testtag" in enc.version
    assert no_network == []
    for key in ("text_projection", "visual.proj", "token_embedding.weight"):
        assert torch.equal(enc.model.state_dict()[key], reference["state"][key])
    normalize = next(t for t in enc.transform.transforms if isinstance(t, Normalize))
    assert (tuple(normalize.mean), tuple(normalize.std)) == (mean, std)
    assert type(enc.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"  # as the tag was trained
    v = enc.encode(TEXTS[:2])
    assert v.shape == (2, DIM) and np.isfinite(v).all()


def test_checkpoint_round_trips_through_create_add_search(reference, encoder, photos, tmp_path):
    """The user's path end to end: `latent create --encoder clip:ARCH/ckpt`, add a folder, search."""
    import json

    from click.testing import CliRunner

    from latent.cli import cli

    folder = tmp_path / "pics"
    folder.mkdir()
    for name, image in zip(("chelsea", "coffee", "rocket"), photos):
        image.save(folder / f"{name}.png")
    spec = f"clip:{ARCH}/{reference['dir'] / 'plain.pt'}"
    runner = CliRunner()
    directory = tmp_path / "idx"

    def run(*args):
        result = runner.invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    assert f"({DIM}-d)" in run("create", directory, "--encoder", spec)
    assert json.loads(run("add", directory, folder, "--json"))["added"] == 3
    info = json.loads(run("info", directory, "--json"))
    assert info["encoder"] == spec and info["dim"] == DIM
    # random weights rank nothing meaningfully, but every query type must agree with the model itself
    hits = json.loads(run("search", directory, TEXTS[0], "-k", "3", "--json"))["hits"]
    text_vec, image_vecs = _reference_vectors(reference, [TEXTS[0]], photos)
    expected = [f"{n}.png" for n in np.array(["chelsea", "coffee", "rocket"])[np.argsort(-(image_vecs @ text_vec[0]))]]
    assert [h["key"] for h in hits] == expected
    np.testing.assert_allclose(sorted((h["score"] for h in hits), reverse=True),
                               np.sort(image_vecs @ text_vec[0])[::-1], atol=1e-4)
    by_image = json.loads(run("similar", directory, "--image", folder / "coffee.png", "-k", "1", "--json",
                               "--include-self"))
    assert by_image["hits"][0]["key"] == "coffee.png" and by_image["hits"][0]["score"] > 0.999


class _Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_is_refused_without_running_it(reference, tmp_path):
    """A checkpoint with a __reduce__ payload: open_clip loads with weights_only=True, so the
    payload never runs and the encoder reports the file cannot be loaded."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": dict(reference["state"]), "x": _Payload(marker)}, evil)
    with pytest.raises(EncoderUnavailable) as refused:
        load_clip(f"{ARCH}/{evil}")
    assert not marker.exists(), "the payload ran"
    assert str(evil) in str(refused.value)
