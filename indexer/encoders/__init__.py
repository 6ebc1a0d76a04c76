"""Encoders: a registry from names (or prefixes such as `clip:`) to factories, open to
plugins (see latent.indexer.plugins). Heavy libraries (torch, sentence-transformers) are
imported only when an encoder that needs them loads; the bundled networks run on onnxruntime
by default (see runtime.py), and an index records which runtime made its vectors."""

from __future__ import annotations

from typing import Callable

from ..errors import EncoderUnavailable
from ..plugins import call_hook
from .base import Encoder, EncoderSpec, normalize
from .clip import load_clip
from .conse import ConseEncoder, conse_spec, settings_of
from .efficientnet import efficientnet_spec, load_efficientnet
from .glove import GloveEncoder
from .minilm import load_minilm, minilm_spec
from .runtime import RUNTIMES, check_runtime, default_runtime
from .sentence import SentenceTransformerEncoder
from .vectors import parse

_FACTORIES: dict[str, tuple[Callable[..., Encoder], str]] = {}
# name -> (runtimes it runs on, the spec of a runtime known without loading) for the bundled networks
_RUNTIMES: dict[str, tuple[tuple[str, ...], Callable[[str], EncoderSpec]]] = {}
# prefix -> (factory of the rest of the name, description, canonical form of the rest, cached, what the rest is)
_PREFIXES: dict[str, tuple[Callable[[str], Encoder], str, Callable[[str], str], bool, str]] = {}
_LOADED: dict[str, Encoder] = {}
# name -> the settings (factory keywords) that an index's recorded encoder version asks for: an index
# made with an earlier default of a bundled encoder keeps making the vectors it holds
_SETTINGS: dict[str, Callable[[str | None], dict]] = {"conse": settings_of}


def register(name: str, factory: Callable, description: str, *, canonical: Callable[[str], str] | None = None,
             cached: bool = True, argument: str = "<argument>", runtimes: tuple[str, ...] = (),
             spec: Callable[[str], EncoderSpec] | None = None) -> None:
    """Register an encoder under a name (`latent encoders` lists them). A name ending in ":"
    is a prefix: `factory(rest)` makes the encoder `prefix + rest`, `canonical(rest)` gives
    the form an index records (absolute paths, say), `cached=False` leaves the caching of
    loaded encoders to the factory, and `argument` names the rest in listings. A name with
    `runtimes` is made by `factory(runtime)`, and `spec(runtime)` says what an index records
    of it without loading it."""
    if name.endswith(":"):
        _PREFIXES[name] = (factory, description, canonical or (lambda rest: rest), cached, argument)
    else:
        _FACTORIES[name] = (factory, description)
        if runtimes:
            _RUNTIMES[name] = (tuple(runtimes), spec or (lambda runtime: get_encoder(name, runtime).to_spec()))


def _plugins() -> None:
    call_hook("register_encoders", register)


def _conse(runtime: str, **settings) -> Encoder:
    return ConseEncoder(get_encoder("minilm", runtime), lambda: get_encoder("efficientnet", runtime), **settings)


def _vectors(rest: str) -> Encoder:
    return parse("vectors:" + rest)


register("minilm", load_minilm, "all-MiniLM-L6-v2 sentence embeddings, 384-d (bundled; the default encoder of create)",
         runtimes=RUNTIMES, spec=minilm_spec)
register("glove", GloveEncoder, "GloVe 6B word vectors, 50-d, 400,000 words (bundled; the @words index)")
register("efficientnet", load_efficientnet,
         "EfficientNet-Lite0 ImageNet CNN, 1280-d image features + top-5 labels (bundled; images only)",
         runtimes=RUNTIMES, spec=efficientnet_spec)
register("conse", _conse, "texts and images in one 384-d space, offline: ConSE over efficientnet + minilm (bundled)",
         runtimes=RUNTIMES, spec=conse_spec)
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


def _runtime_of(name: str, runtime: str | None) -> str | None:
    """The runtime `name` runs on: `runtime`, else the default; None for encoders without runtimes."""
    if name not in _RUNTIMES:
        return None
    runtime = check_runtime(runtime) if runtime is not None else default_runtime()
    allowed = _RUNTIMES[name][0]
    if runtime not in allowed:
        raise EncoderUnavailable(f"encoder {name!r} runs on {' or '.join(allowed)}, not {runtime}")
    return runtime


def encoder_spec(name: str, runtime: str | None = None) -> EncoderSpec:
    """What an index records of the encoder `name` on `runtime` (default: $LATENT_RUNTIME or onnx);
    the bundled encoders say it without loading their models."""
    chosen = _runtime_of(name, runtime)
    if chosen is not None:
        return _RUNTIMES[name][1](chosen)
    return get_encoder(name).to_spec()


def get_encoder(name: str, runtime: str | None = None, *, version: str | None = None) -> Encoder:
    """Return the encoder called `name`, loading it once per process. The bundled networks run
    on `runtime` (onnx or torch; default: $LATENT_RUNTIME, else onnx); others have one way to run.
    `version`, the one an index recorded, keeps an earlier default's settings where it names one
    (conse's first default), so the index's new vectors match those it holds."""
    chosen = _runtime_of(name, runtime)
    settings = _SETTINGS[name](version) if name in _SETTINGS else {}
    cache_key = (name if chosen is None else f"{name}@{chosen}") + (f"#{sorted(settings.items())}" if settings else "")
    if cache_key in _LOADED:
        return _LOADED[cache_key]
    prefix = _prefix_of(name)
    if prefix is not None:
        factory, _, canonical, cached, _ = _PREFIXES[prefix]
        encoder = factory(canonical(name[len(prefix):]))
        if not cached:  # the factory caches (a plugin that sees its model file change on disk)
            return encoder
    elif chosen is not None:
        encoder = _FACTORIES[name][0](chosen, **settings)
    elif name in _FACTORIES:
        encoder = _FACTORIES[name][0]()
    else:
        known = ", ".join(list_encoders())
        raise EncoderUnavailable(f"unknown encoder {name!r}; known encoders: {known}")
    _LOADED[cache_key] = encoder
    return encoder


__all__ = ["Encoder", "EncoderSpec", "normalize", "get_encoder", "encoder_spec", "list_encoders", "register",
           "canonical_name", "RUNTIMES"]
