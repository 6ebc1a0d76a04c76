"""Sentence embeddings through sentence-transformers: `st:<name or path>`, any
sentence-transformers model (the bundled `minilm` runs without it: see minilm.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from ..errors import EncoderUnavailable
from .base import Encoder


def _load_sentence_transformer(name_or_path: str):
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except Exception:  # pragma: no cover - cosmetics only
        pass
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # pragma: no cover - part of the install
        raise EncoderUnavailable(f"sentence-transformers is not installed ({e}); run `make install`") from e
    def unavailable(reason: str) -> EncoderUnavailable:
        return EncoderUnavailable(
            f"cannot load sentence-transformers model {name_or_path!r} ({reason}); "
            "it must be a local model folder or be downloadable from the Hugging Face hub. "
            "Offline, use the bundled encoder minilm"
        )

    local = Path(name_or_path).expanduser().exists()
    attempts = [{"local_files_only": True}] if not local else [{}]
    if not local and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("0", "", "false", "no"):
        attempts.append({})  # then the hub, the ordinary way
    error: Exception | None = None
    for i, kwargs in enumerate(attempts):
        if i and not _hub_reachable():  # fail at once rather than after the hub client's retries
            raise unavailable("not on this machine, and the Hugging Face hub cannot be reached") from error
        try:
            return SentenceTransformer(name_or_path, device="cpu", **kwargs)
        except Exception as e:  # the library raises OSError, ValueError, HTTP errors...
            error = e
    text = str(error).strip()
    raise unavailable(text.splitlines()[0] if text else type(error).__name__) from error


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint's host resolves and accepts a connection."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model, by hub name or local path."""

    modalities = ("text",)
    default_batch_size = 64

    def __init__(self, name_or_path: str, *, name: str | None = None, version: str | None = None):
        self.model = _load_sentence_transformer(name_or_path)
        self.name = name or f"st:{name_or_path}"
        self.version = version or "1"
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def _embed(self, items: Sequence[str]) -> np.ndarray:
        return self.model.encode(
            list(items), batch_size=self.default_batch_size, convert_to_numpy=True,
            normalize_embeddings=False, show_progress_bar=False,
        )
