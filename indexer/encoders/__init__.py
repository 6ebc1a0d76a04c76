"""Encoders: a registry from names to factories. Heavy libraries (torch,
sentence-transformers) are imported only when an encoder that needs them loads."""

from __future__ import annotations

import os
from typing import Callable

from ..errors import EncoderUnavailable
from .base import Encoder, normalize

_FACTORIES: dict[str, tuple[Callable[[], Encoder], str]] = {}
_LOADED: dict[str, Encoder] = {}


def register(name: str, factory: Callable[[], Encoder], description: str) -> None:
    """Register an encoder factory under a name (`latent encoders` lists them)."""
    _FACTORIES[name] = (factory, description)


def _glove() -> Encoder:
    from .glove import GloveEncoder

    return GloveEncoder()


def _minilm() -> Encoder:
    from .sentence import load_minilm

    return load_minilm()


def _efficientnet() -> Encoder:
    from .efficientnet import load_efficientnet

    return load_efficientnet()


def _conse() -> Encoder:
    from .conse import ConseEncoder

    return ConseEncoder()


register("minilm", _minilm, "all-MiniLM-L6-v2 sentence embeddings, 384-d (bundled, default for text)")
register("glove", _glove, "GloVe 6B word vectors, 50-d, 400,000 words (bundled, default for words)")
register("efficientnet", _efficientnet,
         "EfficientNet-Lite0 ImageNet CNN, 1280-d image features + top-5 labels (bundled, default for images)")
register("conse", _conse, "texts and images in one 384-d space, offline: ConSE over efficientnet + minilm (bundled)")


def list_encoders() -> dict[str, str]:
    """Names and descriptions of the registered encoders, plus the `st:` family."""
    out = {name: desc for name, (_, desc) in _FACTORIES.items()}
    out["st:<name-or-path>"] = "any sentence-transformers model: a local folder, or a hub name (needs a network)"
    out["clip:<arch>/<pretrained>"] = ("open_clip, texts and images: a pretrained tag (needs a network or the "
                                       "hub cache) or a local checkpoint file")
    out["vae:<model file>"] = "the latent means of a VAE trained with `latent vae train` (images)"
    out["vectors:<dim>"] = "no model: vectors made elsewhere, added with Index.add_vectors and searched by vector or key"
    return out


def canonical_name(name: str) -> str:
    """The name an encoder is recorded under: file-based names use absolute paths."""
    if name.startswith("vae:") and len(name) > 4:
        return "vae:" + os.path.abspath(os.path.expanduser(name[4:]))
    return name


def get_encoder(name: str) -> Encoder:
    """Return the encoder called `name`, loading it once per process."""
    if name.startswith("vae:") and len(name) > 4:  # cached by the loader, which sees a retrained file
        from ..generative import load_vae_encoder

        return load_vae_encoder(canonical_name(name)[4:])
    if name in _LOADED:
        return _LOADED[name]
    if name.startswith("st:") and len(name) > 3:
        from .sentence import SentenceTransformerEncoder

        encoder: Encoder = SentenceTransformerEncoder(name[3:])
    elif name.startswith("clip:") and len(name) > 5:
        from .clip import load_clip

        encoder = load_clip(name[5:])
    elif name.startswith("vectors:"):
        from .vectors import parse

        encoder = parse(name)
    elif name in _FACTORIES:
        encoder = _FACTORIES[name][0]()
    else:
        known = ", ".join(list_encoders())
        raise EncoderUnavailable(f"unknown encoder {name!r}; known encoders: {known}")
    _LOADED[name] = encoder
    return encoder


__all__ = ["Encoder", "normalize", "get_encoder", "list_encoders", "register", "canonical_name"]
