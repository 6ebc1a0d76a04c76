"""OpenCLIP models as text + image encoders: `clip:<arch>/<pretrained>`.

Spec syntax: everything before the FIRST `/` is the open_clip architecture (a name from
`open_clip.list_models()`, e.g. `ViT-B-32`; matched case-insensitively). Everything after
it is the pretrained weights, and is read as:

* an open_clip pretrained tag of that architecture (`open_clip.list_pretrained_tags_by_model`,
  matched the way open_clip matches tags: case-insensitive, `-` same as `_`), e.g.
  `clip:ViT-B-32/laion2b_s34b_b79k`; loaded as open_clip users load it,
  `open_clip.create_model_and_transforms(arch, pretrained=tag)`, weights from the local
  Hugging Face cache, or downloaded when the hub can be reached;
* otherwise, a path to a local checkpoint file (a state dict saved with `torch.save`, also in
  the `{"state_dict": ...}` form of open_clip's training checkpoints, or `.safetensors`), e.g.
  `clip:ViT-B-32//abs/path/ckpt.pt` (an absolute path gives two slashes),
  `clip:RN50/./model.pt` or `clip:RN50/ckpts/model.pt` (relative to the working directory),
  `clip:RN50/~/model.pt`. A file whose name is also a tag of the architecture is reached
  with `./name`.

Images are preprocessed with the eval transform open_clip builds for the weights (size, mean,
std, interpolation and resize mode travel with the pretrained tag). Everything runs on the CPU.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..errors import EncoderUnavailable
from .base import Encoder
from .sentence import _hub_reachable

OFFLINE_HINT = "Offline, use the bundled encoder conse"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")

_LOAD_LOCK = threading.RLock()  # one load at a time; also guards the hub's offline switch
_CACHE: dict[tuple, ClipEncoder] = {}  # filled by load_clip


# -- the spec ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """A parsed `<arch>/<pretrained>`: exactly one of `tag` and `checkpoint` is set."""

    arch: str
    tag: str | None = None
    checkpoint: Path | None = None  # absolute

    @property
    def pretrained(self) -> str:
        """The `pretrained` argument for open_clip (an absolute path is never taken for a tag)."""
        return self.tag if self.tag is not None else str(self.checkpoint)


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - part of the install
        raise EncoderUnavailable(
            f"clip: encoders need open_clip_torch ({e}); run `make install`. {OFFLINE_HINT}") from e
    return open_clip


def parse_spec(spec: str) -> ClipSpec:
    """Split `<arch>/<pretrained>` at the first `/` and decide tag or checkpoint (see the module doc)."""
    oc = _open_clip()
    arch, sep, pretrained = spec.partition("/")
    arch = arch.strip()
    models = oc.list_models()
    if arch.startswith(("hf-hub:", "local-dir:")):
        raise EncoderUnavailable(
            f"clip:{spec}: open_clip's hf-hub: and local-dir: model names are not supported; name a built-in "
            "architecture and a pretrained tag or checkpoint file: clip:<arch>/<pretrained-tag-or-checkpoint-path>"
        )
    if arch not in models:
        folded = [m for m in models if m.lower() == arch.lower()]
        if len(folded) != 1:
            lower = {m.lower(): m for m in models}
            close = [lower[m] for m in difflib.get_close_matches(arch.lower(), list(lower), n=4, cutoff=0.6)]
            common = [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "ViT-S-32-alt") if m in models]
            shown = list(dict.fromkeys(close + common))[:8]
            raise EncoderUnavailable(
                f"unknown open_clip architecture {arch!r} in clip:{spec}; known ones include "
                f"{', '.join(shown)} ({len(models)} in all, see open_clip.list_models()); "
                "the syntax is clip:<arch>/<pretrained-tag-or-checkpoint-path>"
            )
        arch = folded[0]
    tags = oc.list_pretrained_tags_by_model(arch)
    if not sep or not pretrained.strip():
        raise EncoderUnavailable(
            f"clip:{spec} names no weights; use clip:{arch}/<pretrained>, with a pretrained tag "
            f"({_tag_list(tags, arch)}) or a local checkpoint file. {OFFLINE_HINT}"
        )
    if oc.is_pretrained_cfg(arch, pretrained):
        canonical = pretrained.lower().replace("-", "_")
        return ClipSpec(arch, tag=next((t for t in tags if t == canonical), pretrained))
    path = Path(pretrained).expanduser()
    if path.is_file():
        return ClipSpec(arch, checkpoint=path.resolve())
    if path.exists():
        raise EncoderUnavailable(
            f"checkpoint {str(path)!r} in clip:{spec} is not a file; name the checkpoint file itself")
    looks_like_path = "/" in pretrained or os.sep in pretrained or pretrained.lower().endswith(CHECKPOINT_SUFFIXES)
    what = (f"checkpoint file not found: {str(path.absolute())!r}" if looks_like_path else
            f"{pretrained!r} is neither a pretrained tag of {arch} nor an existing checkpoint file")
    raise EncoderUnavailable(
        f"cannot load clip:{spec}: {what} (pretrained tags of {arch}: {_tag_list(tags, arch)}). {OFFLINE_HINT}"
    )


def _tag_list(tags: list[str], arch: str) -> str:
    if not tags:
        return f"none; {arch} has no pretrained tags in open_clip, so pass a checkpoint file"
    return ", ".join(tags[:8]) + (f" and {len(tags) - 8} more" if len(tags) > 8 else "")


# -- loading -----------------------------------------------------------------------------------
def _offline_env() -> str:
    """The variable that puts the hub client offline (as huggingface_hub reads them), or ''."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "0").lower() not in ("0", "", "false", "no"):
            return var
    return ""


@contextlib.contextmanager
def _hub_offline(on: bool):
    """Turn the Hugging Face hub client's offline mode on for the block (cached files only,
    no requests, no retries). The client reads the flag at call time; callers hold _LOAD_LOCK."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip then uses URLs only
        yield
        return
    before = constants.HF_HUB_OFFLINE
    if on:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


class _DropOpenClipLogs(logging.Filter):
    """open_clip logs its failures with logging.error on the root logger; we raise them instead."""

    def __init__(self, package_dir: str):
        super().__init__()
        self.package_dir = package_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self.package_dir)


def _url_only(oc, spec: ClipSpec) -> str:
    """The download URL when a tag's weights come from a plain URL rather than the hub, else ''."""
    if spec.tag is None:
        return ""
    cfg = oc.get_pretrained_cfg(spec.arch, spec.tag)
    if "file" in cfg or (cfg.get("hf_hub") and oc.pretrained.has_hf_hub()):
        return ""
    return cfg.get("url", "")


def _url_cached(url: str) -> bool:
    # open_clip's download_pretrained_from_url keeps files in ~/.cache/clip/<basename> by default
    return os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, urlparse(url).port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _is_missing_files(error: BaseException | None) -> bool:
    """Whether a load failed for want of files (cache miss, offline, no network): worth a download."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _create(oc, spec: ClipSpec, offline: bool):
    """(model, eval transform, tokenizer) through open_clip, with the hub offline if asked."""
    kwargs = {}
    if spec.tag is not None:
        # Weights trained with QuickGELU (the OpenAI ones) under a plain arch name: open_clip only
        # warns about the mismatch and gives worse vectors; build the activation the weights expect.
        tag_cfg = oc.get_pretrained_cfg(spec.arch, spec.tag)
        if tag_cfg.get("quick_gelu") and not (oc.get_model_config(spec.arch) or {}).get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
    quiet = _DropOpenClipLogs(os.path.dirname(oc.__file__))
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with _hub_offline(offline):
            model, _, transform = oc.create_model_and_transforms(
                spec.arch, pretrained=spec.pretrained, device="cpu", precision="fp32", **kwargs)
            tokenizer = oc.get_tokenizer(spec.arch)
    finally:
        root.removeFilter(quiet)
    model.eval()
    model.requires_grad_(False)
    return model, transform, tokenizer


def _load(spec: ClipSpec, name: str):
    """Load from local files first; then, if files are missing, download them when allowed and reachable."""
    oc = _open_clip()
    what = f"checkpoint {str(spec.checkpoint)!r}" if spec.checkpoint else f"pretrained tag {spec.tag!r}"

    advice = (f"the weights must be in the local cache or downloadable, or be a local checkpoint file: "
              f"clip:{spec.arch}/<path>" if spec.checkpoint is None else
              "load it once where the hub can be reached, to cache them")

    def unavailable(reason: str) -> EncoderUnavailable:
        return EncoderUnavailable(f"cannot load {name} (open_clip {spec.arch} with {what}): {reason}; {advice}. "
                                  f"{OFFLINE_HINT}")

    url = _url_only(oc, spec)
    error: Exception | None = None
    if url and not _url_cached(url):
        error = FileNotFoundError(f"{os.path.basename(url)} is not in ~/.cache/clip")
    else:
        try:
            return _create(oc, spec, offline=True)
        except Exception as e:  # open_clip raises RuntimeError, OSError, ValueError, HTTP errors...
            error = e
    if not _is_missing_files(error):
        if spec.checkpoint is not None:
            raise EncoderUnavailable(
                f"cannot load {name}: the checkpoint does not load into open_clip architecture {spec.arch} "
                f"({_first_line(error)}); is it a checkpoint of {spec.arch}?"
            ) from error
        raise unavailable(_first_line(error)) from error
    missing = ("not on this machine" if spec.checkpoint is None else
               f"{spec.arch} also needs files from the Hugging Face hub that are not on this machine "
               f"({_first_line(error)})")
    if _offline_env():
        raise unavailable(f"{missing}, and {_offline_env()} is set") from error
    # fail at once rather than after the hub client's (or urllib's) retries and timeouts
    if not (_host_reachable(url) if url else _hub_reachable()):
        host = urlparse(url).hostname if url else "the Hugging Face hub"
        raise unavailable(f"{missing}, and {host} cannot be reached") from error
    try:
        return _create(oc, spec, offline=False)
    except Exception as e:
        raise unavailable(_first_line(e)) from e


# -- the encoder -------------------------------------------------------------------------------
class ClipEncoder(Encoder):
    """An open_clip model: texts and images into one latent space."""

    modalities = ("text", "image")
    default_batch_size = 32

    def __init__(self, spec: str, *, parsed: ClipSpec | None = None):
        import torch

        oc = _open_clip()
        self.spec = parse_spec(spec) if parsed is None else parsed
        self.name = f"clip:{spec}"
        with _LOAD_LOCK:
            self.model, self.transform, self.tokenizer = _load(self.spec, self.name)
        self._torch = torch
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers refuse concurrent calls
        weights = self.spec.tag if self.spec.tag is not None else f"checkpoint {self.spec.checkpoint.name}"
        self.version = f"{self.spec.arch}/{weights} (open_clip {oc.__version__})"
        self.dim = self._find_dim(oc)

    def _find_dim(self, oc) -> int:
        config = oc.get_model_config(self.spec.arch) or {}
        if config.get("embed_dim"):
            return int(config["embed_dim"])
        projection = getattr(self.model, "text_projection", None)
        if isinstance(projection, self._torch.Tensor) and projection.ndim == 2:
            return int(projection.shape[1])
        output_dim = getattr(self.model.visual, "output_dim", None)
        if output_dim:
            return int(output_dim)
        return int(self._embed(["a"]).shape[1])  # pragma: no cover - every built-in config has embed_dim

    # -- texts ----------------------------------------------------------------------------------
    def _embed(self, items: Sequence[str]) -> np.ndarray:
        items = list(items)
        out = []
        with self._torch.inference_mode():
            for i in range(0, len(items), self.default_batch_size):
                with self._tokenizer_lock:
                    tokens = self.tokenizer(items[i:i + self.default_batch_size])
                out.append(self.model.encode_text(tokens).float().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    # -- images ---------------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """The weights' eval transform (resize, centre crop, normalise) as float32 (3, H, W).

        The transform is stateless (torchvision Resize/CenterCrop/ToTensor/Normalize), so it
        is safe to call from several worker threads at once."""
        return np.ascontiguousarray(self.transform(image).numpy(), dtype=np.float32)

    def _embed_images(self, batch: np.ndarray) -> tuple[np.ndarray, None]:
        if not batch.flags.writeable:
            batch = batch.copy()
        out = []
        with self._torch.inference_mode():
            for i in range(0, len(batch), self.default_batch_size):
                x = self._torch.from_numpy(batch[i:i + self.default_batch_size])
                out.append(self.model.encode_image(x).float().numpy())
        return np.concatenate(out).astype(np.float32, copy=False), None


def load_clip(spec: str) -> ClipEncoder:
    """The encoder for `clip:<spec>` (spec without the `clip:` prefix), loaded once per process.

    A checkpoint file that changed on disk since it was loaded is loaded again."""
    parsed = parse_spec(spec)
    stamp = None
    if parsed.checkpoint is not None:
        st = parsed.checkpoint.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    key = (spec, parsed, stamp)
    with _LOAD_LOCK:
        if key not in _CACHE:
            for old in [k for k in _CACHE if k[:2] == key[:2]]:
                del _CACHE[old]
            _CACHE[key] = ClipEncoder(spec, parsed=parsed)
        return _CACHE[key]


__all__ = ["ClipEncoder", "ClipSpec", "load_clip", "parse_spec"]
