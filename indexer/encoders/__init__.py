"""Encoders: a registry from names (or prefixes such as `clip:`) to factories, open to
plugins (see latent.indexer.plugins). Heavy libraries (torch, sentence-transformers) are
imported only when an encoder that needs them loads."""

from __future__ import annotations

from typing import Callable

from ..errors import EncoderUnavailable
from ..plugins import call_hook
from .base import Encoder, normalize
from .clip import load_clip
from .conse import ConseEncoder
from .efficientnet import load_efficientnet
from .glove import GloveEncoder
from .sentence import SentenceTransformerEncoder, load_minilm
from .vectors import parse

_FACTORIES: dict[str, tuple[Callable[[], Encoder], str]] = {}
# prefix -> (factory of the rest of the name, description, canonical form of the rest, cached, what the rest is)
_PREFIXES: dict[str, tuple[Callable[[str], Encoder], str, Callable[[str], str], bool, str]] = {}
_LOADED: dict[str, Encoder] = {}


def register(name: str, factory: Callable, description: str, *, canonical: Callable[[str], str] | None = None,
             cached: bool = True, argument: str = "<argument>") -> None:
    """Register an encoder under a name (`latent encoders` lists them). A name ending in ":"
    is a prefix: `factory(rest)` makes the encoder `prefix + rest`, `canonical(rest)` gives
    the form an index records (absolute paths, say), `cached=False` leaves the caching of
    loaded encoders to the factory, and `argument` names the rest in listings."""
    if name.endswith(":"):
        _PREFIXES[name] = (factory, description, canonical or (lambda rest: rest), cached, argument)
    else:
        _FACTORIES[name] = (factory, description)


def _plugins() -> None:
    call_hook("register_encoders", register)


def _conse() -> Encoder:
    return ConseEncoder(get_encoder("minilm"), get_encoder("efficientnet"))


def _vectors(rest: str) -> Encoder:
    return parse("vectors:" + rest)


register("minilm", load_minilm, "all-MiniLM-L6-v2 sentence embeddings, 384-d (bundled; the default encoder of create)")
register("glove", GloveEncoder, "GloVe 6B word vectors, 50-d, 400,000 words (bundled; the @words index)")
register("efficientnet", load_efficientnet,
         "EfficientNet-Lite0 ImageNet CNN, 1280-d image features + top-5 labels (bundled; images only)")
register("conse", _conse, "texts and images in one 384-d space, offline: ConSE over efficientnet + minilm (bundled)")
register("st:", SentenceTransformerEncoder,
         "any sentence-transformers model: a local folder, or a hub name (needs a network)", argument="<name-or-path>")
register("clip:", load_clip, "open_clip, texts and images: a pretrained tag (needs a network or the hub cache) or a "
         "local checkpoint file", argument="<arch>/<pretrained>")
register("vectors:", _vectors,
         "no model: vectors made elsewhere, added with Index.add_vectors and searched by vector or key",
         argument="<dim>")


def list_encoders() -> dict[str, str]:
    """Names and descriptions of the registered encoders and encoder families (prefixes)."""
    _plugins()
    out = {name: desc for name, (_, desc) in _FACTORIES.items()}
    for prefix, (_, desc, _, _, argument) in _PREFIXES.items():
        out[prefix + argument] = desc
    return out


def _prefix_of(name: str) -> str | None:
    head, sep, rest = name.partition(":")
    if not sep or (not rest and head != "vectors"):
        return None
    if head + ":" not in _PREFIXES:
        _plugins()
    return head + ":" if head + ":" in _PREFIXES else None


def canonical_name(name: str) -> str:
    """The name an encoder is recorded under (a plugin's file-based names use absolute paths)."""
    prefix = _prefix_of(name)
    return prefix + _PREFIXES[prefix][2](name[len(prefix):]) if prefix else name


def get_encoder(name: str) -> Encoder:
    """Return the encoder called `name`, loading it once per process."""
    if name in _LOADED:
        return _LOADED[name]
    prefix = _prefix_of(name)
    if prefix is not None:
        factory, _, canonical, cached, _ = _PREFIXES[prefix]
        encoder = factory(canonical(name[len(prefix):]))
        if not cached:  # the factory caches (a plugin that sees its model file change on disk)
            return encoder
    elif name in _FACTORIES:
        encoder = _FACTORIES[name][0]()
    else:
        known = ", ".join(list_encoders())
        raise EncoderUnavailable(f"unknown encoder {name!r}; known encoders: {known}")
    _LOADED[name] = encoder
    return encoder


__all__ = ["Encoder", "normalize", "get_encoder", "list_encoders", "register", "canonical_name"]
