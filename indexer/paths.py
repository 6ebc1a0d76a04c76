"""Where latent keeps files of its own: the cache directory of the built-in indexes, model
exports and class embeddings ($LATENT_CACHE_DIR, else the platform's user cache directory)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """$LATENT_CACHE_DIR, else the platform's user cache directory for latent."""
    env = os.environ.get("LATENT_CACHE_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("latent"))
