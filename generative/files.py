"""Model files of the generative models: one `torch.save` of a plain dict,

    {"latent_model": "vae" | "gan", "format_version": 1,
     "config": {...JSON-able...}, "history": [{...JSON-able...}, ...],
     "state": {"<module>.<parameter>": tensor, ...}}

read back with `torch.load(path, weights_only=True)` and nothing else, so a file cannot
run code when it is loaded: pickled Python objects are refused by torch's restricted
unpickler before anything is constructed. Anything that is not a model of the kind asked
for raises ModelFileError (an InputError) saying what the file is and what to do.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path

from latent.indexer.errors import InputError

FORMAT_VERSION = 1
KINDS = ("vae", "gan")


class ModelFileError(InputError):
    """A model file is missing, unreadable, unsafe, or not a latent model of the expected kind."""


def _train_hint(kind: str, path) -> str:
    return f"train one with `latent {kind} train digits -o {path}`"


def _give_hint(kind: str) -> str:
    return f"give a model file written by `latent {kind} train`"


def check_model_path(path: str | Path, kind: str) -> Path:
    """Fail early (before training) when a model cannot be written to `path`."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give a file name for the model, e.g. {path / (kind + '.pt')}")
    if not path.parent.is_dir():
        raise ModelFileError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ModelFileError(f"cannot write {path}: permission denied")
    return path


def save_model(path: str | Path, kind: str, config: dict, state: dict, history: list[dict]) -> Path:
    """Write a model file (atomically: a temporary file in the same folder, then renamed)."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    path = check_model_path(path, kind)
    try:
        json.dumps(config, allow_nan=False)
        json.dumps(history, allow_nan=False)
    except (TypeError, ValueError) as e:  # a bug in the caller, not a user error
        raise ValueError(f"model config and history must be JSON-able ({e})") from None
    payload = {"latent_model": kind, "format_version": FORMAT_VERSION, "config": config, "history": history,
               "state": {name: t.detach().cpu().clone().contiguous() for name, t in state.items()}}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except OSError as e:
        raise ModelFileError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _unpickler_reason(text: str) -> str:
    """The weights-only unpickler's own reason from torch's long message (which advises weights_only=False)."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    reason = " ".join((found.group(1) if found else text).split())
    return reason.split(". Please use")[0].rstrip(".")[:200]


def load_model(path: str | Path, kind: str) -> tuple[dict, dict, list[dict]]:
    """(config, state dict of tensors, history) of a model file of `kind`; ModelFileError otherwise.

    Only `torch.load(..., weights_only=True)` ever reads the file."""
    import torch

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist; {_train_hint(kind, path)}")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file; give the model file written by `latent {kind} train`")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler stopped before running anything
        reason = _unpickler_reason(str(e))
        if "global" in reason.lower():
            raise ModelFileError(
                f"{path} is not a latent {kind} model: it holds Python objects that a weights-only load refuses "
                f"({reason}); nothing in it was run. Do not load untrusted files any other way; "
                f"{_give_hint(kind)}") from None
        raise ModelFileError(f"{path} is not a latent {kind} model file: the weights-only loader refuses it "
                             f"({reason}); nothing in it was run; {_give_hint(kind)}") from None
    except Exception as e:  # not a torch file at all: zip, magic number, EOF, OS errors...
        text = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path} is not a latent {kind} model file (cannot read it as a torch file: "
                             f"{text[:160]}); {_give_hint(kind)}") from None
    if not isinstance(payload, dict) or payload.get("latent_model") not in KINDS:
        raise ModelFileError(f"{path} is a torch file but not a latent model (no 'latent_model' entry); "
                             f"{_give_hint(kind)}")
    found = payload["latent_model"]
    if found != kind:
        raise ModelFileError(f"{path} is a latent {found.upper()} model, not a {kind.upper()}; "
                             f"use it with `latent {found} ...`, or give a {kind.upper()} model")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path} has model format version {payload.get('format_version')!r}; this latent "
                             f"reads version {FORMAT_VERSION}: retrain it with this version")
    config, state, history = payload.get("config"), payload.get("state"), payload.get("history", [])
    if not isinstance(config, dict) or not isinstance(state, dict) or not isinstance(history, list) or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError(f"{path} is a damaged latent {kind} model (config, state or history malformed); "
                             "retrain it")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{path} is a damaged latent {kind} model: {name} holds NaN or infinite values "
                                 "(did training diverge?); retrain it")
    return config, state, history


def load_state(module, state: dict, path, kind: str) -> None:
    """Load a state dict into a freshly built module; ModelFileError when names or shapes differ."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelFileError(f"{path} is a damaged latent {kind} model: its weights do not fit its own config "
                             f"({first[:200]}); retrain it") from None


def require(config: dict, key: str, kinds: type | tuple, path, kind: str, limit: int = 4096):
    """A config entry of the expected type (ints from 1 to `limit`, so a crafted file cannot make
    the loader build a huge network), or ModelFileError."""
    value = config.get(key)
    bad = not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool) or \
        (isinstance(value, int) and not 1 <= value <= limit)
    if bad:
        raise ModelFileError(f"{path} is a damaged latent {kind} model: config entry {key!r} is {value!r}; "
                             "retrain it")
    return value
