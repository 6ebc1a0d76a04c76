"""Torch helpers shared by the VAE and the GAN: seeded construction without touching the
caller's global random state, shuffled mini-batches, and training-data checks."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from latent.indexer.encoders.base import torch_threads  # noqa: F401  (the generative modules take it from here)
from latent.indexer.errors import InputError
from .data import check_size

OnEpoch = Callable[[dict], None]  # called after every epoch with that epoch's figures

# Torch threads for training and inference. These networks are small: one thread is nearly
# as fast as two on an idle 2-core machine, and on a busy one (other processes on the cores)
# two OpenMP threads spin-wait for each other, measured 20 ms -> 1,200 ms per GAN step.
# One thread also makes results bit-identical across machines with different core counts.
THREADS = 1


def no_epoch(figures: dict) -> None:
    pass


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with torch's global generator seeded, restoring its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def generator(seed: int):
    return torch.Generator().manual_seed(int(seed))


def batches(n: int, batch_size: int, gen) -> Iterator:
    """Index tensors of a shuffled epoch (the last batch may be short; a 1-item batch is dropped)."""
    order = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) > 1 or n == 1:
            yield idx


def training_images(images: np.ndarray, what: str):
    """(n, 1, s, s) float32 tensor of training images in [0, 1]; InputError when unusable."""
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1 or array.shape[2] != array.shape[3]:
        raise InputError(f"{what} trains on grey square images (n, 1, s, s); got shape {array.shape}")
    check_size(int(array.shape[-1]))
    if len(array) < 2:
        raise InputError(f"{what} needs at least 2 training images, got {len(array)}")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InputError(f"{what} training images must be finite values in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(array))


def positive(value, name: str, kind=int):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or \
            (kind is int and int(value) != value):
        raise InputError(f"{name} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")
    return kind(value)


class Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)


@dataclass(kw_only=True)
class TrainedModel:
    """What the VAE and the GAN share: their config, per-epoch history and file."""

    config: dict
    history: list[dict] = field(default_factory=list)
    path: Path | None = None

    @property
    def size(self) -> int:
        return int(self.config["size"])

    @property
    def latent_dim(self) -> int:
        return int(self.config["latent_dim"])

    def latent_batch(self, z, what: str, error: type[Exception]) -> np.ndarray:
        """z as float32 (n, latent_dim); one vector becomes a batch of one; else `error`."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 1:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise error(f"this {what} {self.latent_dim}-d latent vectors, got shape {z.shape}")
        return z
