"""A small convolutional variational autoencoder on grey size x size images.

Encoder: two stride-2 convolutions and a dense layer to the mean and log-variance of
q(z|x), a diagonal Gaussian; a sample z = mean + exp(logvar / 2) * eps (the
reparameterisation, so gradients flow through mean and logvar). Decoder: a dense layer
and two stride-2 transposed convolutions to per-pixel Bernoulli logits.

Loss per image = reconstruction + beta * KL, both summed over pixels / latent
dimensions and averaged over the batch:
    reconstruction = binary cross-entropy of the logits against the pixels in [0, 1]
    KL             = KL(q(z|x) || N(0, I)) = -1/2 * sum(1 + logvar - mean^2 - exp(logvar))
Both terms are reported after every epoch.

As an encoder of the engine (`vae:<model path>`), an image's vector is its latent mean.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latent.indexer.encoders.base import Encoder
from latent.indexer.errors import EncoderMismatch, EncoderUnavailable, InputError
from latent.indexer.index import Index
from latent.indexer.readers import read_inputs
from latent.indexer.store import DB_NAME
from .common import (THREADS, Clock, TrainedModel, OnEpoch, batches, generator, no_epoch, positive, seeded, torch_threads,
                     training_images)
from .data import DIGITS, Dataset, as_images, check_size, to_model_input
from .files import ModelFileError, load_model, load_state, require, save_model

KIND = "vae"
DEFAULTS = {"latent_dim": 10, "width": 32, "hidden": 256, "epochs": 100, "batch_size": 64, "lr": 2e-3,
            "beta": 1.0, "seed": 0}


class VAENet(nn.Module):
    """Convolutional encoder to (mean, logvar); decoder from z to per-pixel logits."""

    def __init__(self, size: int, latent_dim: int, width: int, hidden: int):
        super().__init__()
        self.base, self.width = size // 4, width
        flat = 2 * width * self.base * self.base
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(flat, hidden), nn.LeakyReLU(0.2))
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.decoder_in = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, flat), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1))

    def encode(self, x):
        h = self.encoder(x)
        return self.mean(h), self.logvar(h).clamp(-12.0, 8.0)

    def decode_logits(self, z):
        return self.decoder(self.decoder_in(z).view(len(z), 2 * self.width, self.base, self.base))

    def forward(self, x, eps):
        """(logits, mean, logvar) with z = mean + exp(logvar / 2) * eps: the reparameterisation."""
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * eps
        return self.decode_logits(z), mean, logvar


def vae_loss(logits, x, mean, logvar, beta: float = 1.0):
    """(total, reconstruction, KL), each per image averaged over the batch."""
    n = len(x)
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
    kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum() / n
    return recon + beta * kl, recon, kl


@dataclass(kw_only=True)
class VAEModel(TrainedModel):
    """A trained VAE: the network (eval mode), its config and per-epoch training history."""

    net: VAENet

    def _inputs(self, images) -> torch.Tensor:
        array = as_images(images)
        if array.shape[1:] != (self.size, self.size):
            raise EncoderMismatch(f"this VAE takes {self.size}x{self.size} images, got {array.shape[1:]}")
        return torch.from_numpy(np.ascontiguousarray(array[:, None]))

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(means, log-variances), float32 (n, latent_dim), of images (n, [1,] s, s) in [0, 1]."""
        x = self._inputs(images)
        means, logvars = [], []
        with torch.inference_mode(), torch_threads(THREADS):
            for start in range(0, len(x), 512):
                m, lv = self.net.encode(x[start:start + 512])
                means.append(m.numpy())
                logvars.append(lv.numpy())
        if not means:
            return np.zeros((0, self.latent_dim), np.float32), np.zeros((0, self.latent_dim), np.float32)
        return np.concatenate(means).astype(np.float32), np.concatenate(logvars).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Images (n, s, s) in [0, 1] (pixel probabilities) of latent vectors (n, latent_dim)."""
        z = self.latent_batch(z, "VAE decodes", EncoderMismatch)
        with torch.inference_mode(), torch_threads(THREADS):
            out = torch.sigmoid(self.net.decode_logits(torch.from_numpy(np.ascontiguousarray(z))))
        return out[:, 0].numpy().astype(np.float32)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Decoded latent means of images: (n, s, s) in [0, 1]."""
        return self.decode(self.encode(images)[0])

    def sample(self, n: int, *, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        """n images decoded from the prior N(0, temperature^2 I), reproducibly for a seed."""
        n = positive(n, "the number of samples")
        z = torch.randn(n, self.latent_dim, generator=generator(seed)).numpy() * float(temperature)
        return self.decode(z)

    def interpolate(self, a: np.ndarray, b: np.ndarray, steps: int = 10) -> np.ndarray:
        """`steps` images decoded along the straight line between the latent means of images a and b
        (both ends included): (steps, s, s)."""
        steps = positive(steps, "steps")
        if steps < 2:
            raise InputError("an interpolation needs at least 2 steps (the two ends)")
        means = self.encode(np.concatenate([as_images(a), as_images(b)]))[0]
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        return self.decode((1 - t) * means[0] + t * means[1])

    def state(self) -> dict:
        return dict(self.net.state_dict())

    def save(self, path: str | Path) -> Path:
        self.path = save_model(path, KIND, self.config, self.state(), self.history)
        return self.path


def _config(size: int, latent_dim: int, width: int, hidden: int, **more) -> dict:
    return {"size": check_size(size), "latent_dim": positive(latent_dim, "latent_dim"),
            "width": positive(width, "width"), "hidden": positive(hidden, "hidden"), **more}


def train_vae(data: Dataset | np.ndarray, *, latent_dim: int = DEFAULTS["latent_dim"],
              width: int = DEFAULTS["width"], hidden: int = DEFAULTS["hidden"], epochs: int = DEFAULTS["epochs"],
              batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"], beta: float = DEFAULTS["beta"],
              seed: int = DEFAULTS["seed"], on_epoch: OnEpoch = no_epoch, threads: int | None = THREADS) -> VAEModel:
    """Train a VAE on a Dataset or on images (n, [1,] s, s) in [0, 1]; deterministic for a seed.

    `on_epoch` gets {"epoch", "epochs", "loss", "recon", "kl", "seconds"} after each epoch
    (per-image averages over the epoch; seconds since training began)."""
    source = data.source if isinstance(data, Dataset) else "arrays"
    x = training_images(data.images if isinstance(data, Dataset) else data, "the VAE")
    epochs, batch_size = positive(epochs, "epochs"), positive(batch_size, "batch size")
    lr, beta = positive(lr, "learning rate", float), float(beta)
    if beta < 0:
        raise InputError(f"beta must be 0 or more, got {beta}")
    config = _config(int(x.shape[-1]), latent_dim, width, hidden, data=source, images=len(x), epochs=epochs,
                     batch_size=batch_size, lr=lr, beta=beta, seed=int(seed))
    with torch_threads(threads):
        with seeded(seed):
            net = VAENet(config["size"], config["latent_dim"], config["width"], config["hidden"])
        history = _fit(net, x, config, on_epoch)
    net.eval()
    config["train_seconds"] = history[-1]["seconds"]
    config["threads"] = threads
    return VAEModel(net=net, config=config, history=history)


def _fit(net: VAENet, x, config: dict, on_epoch: OnEpoch) -> list[dict]:
    epochs, lr, beta = config["epochs"], config["lr"], config["beta"]
    gen = generator(config["seed"] + 1)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs, eta_min=lr * 0.05)
    history: list[dict] = []
    clock = Clock()
    net.train()
    for epoch in range(1, epochs + 1):
        totals = np.zeros(3)
        for idx in batches(len(x), config["batch_size"], gen):
            xb = x[idx]
            eps = torch.randn(len(xb), config["latent_dim"], generator=gen)
            logits, mean, logvar = net(xb, eps)
            loss, recon, kl = vae_loss(logits, xb, mean, logvar, beta)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            totals += np.array([loss.item(), recon.item(), kl.item()]) * len(xb)
        schedule.step()
        loss, recon, kl = (totals / len(x)).tolist()
        if not np.isfinite(loss):
            raise InputError(f"VAE training diverged at epoch {epoch} (loss {loss}); lower the learning rate")
        figures = {"epoch": epoch, "epochs": epochs, "loss": round(loss, 4), "recon": round(recon, 4),
                   "kl": round(kl, 4), "seconds": clock.seconds()}
        history.append(figures)
        on_epoch(figures)
    return history


def load_vae(path: str | Path) -> VAEModel:
    """A VAE model file (weights-only load); ModelFileError when it is not one."""
    config, state, history = load_model(path, KIND)
    size = require(config, "size", int, path, KIND)
    try:
        check_size(size)
    except InputError:
        raise ModelFileError(f"{path} is a damaged latent VAE model: image size {size!r}; retrain it") from None
    net = VAENet(size, *(require(config, k, int, path, KIND) for k in ("latent_dim", "width", "hidden")))
    load_state(net, state, path, KIND)
    net.eval()
    return VAEModel(net=net, config=config, history=history, path=Path(path))


# -- the engine's encoder -------------------------------------------------------------------------------
class VAEEncoder(Encoder):
    """Images to the latent means of a trained VAE (`vae:<absolute model path>`)."""

    modalities = ("image",)
    default_batch_size = 256

    def __init__(self, model: VAEModel, path: str | Path):
        self.model = model
        self.path = os.path.abspath(path)
        self.name = f"vae:{self.path}"
        self.dim = model.latent_dim
        self.size = model.size
        digest = hashlib.sha256(Path(self.path).read_bytes()).hexdigest()[:16]
        self.version = f"vae {self.size}x{self.size} latent {self.dim} sha256:{digest}"

    def preprocess(self, image) -> np.ndarray:
        """An RGB (or any) PIL image to the grey (1, size, size) model input in [0, 1]."""
        return to_model_input(image, self.size)

    def _embed_images(self, batch: np.ndarray) -> tuple[np.ndarray, None]:
        return self.model.encode(batch)[0], None


_CACHE: dict[tuple, VAEEncoder] = {}
_CACHE_LOCK = threading.Lock()


def load_vae_encoder(path: str | Path) -> VAEEncoder:
    """The encoder `vae:<path>`, loaded once per process (again when the file changed on disk).

    Raises EncoderUnavailable (saying why) when the file is not a latent VAE model."""
    absolute = os.path.abspath(path)
    try:
        st = os.stat(absolute)
        key = (absolute, st.st_size, st.st_mtime_ns)
    except OSError:
        key = (absolute, None, None)
    with _CACHE_LOCK:
        if key not in _CACHE:
            try:
                model = load_vae(absolute)
            except ModelFileError as e:
                raise EncoderUnavailable(f"cannot load encoder vae:{path}: {e}") from None
            for old in [k for k in _CACHE if k[0] == absolute]:
                del _CACHE[old]
            _CACHE[key] = VAEEncoder(model, absolute)
        return _CACHE[key]


def open_index(directory: str | Path, encoder: VAEEncoder, *, index_type: str = "auto"):
    """The index in `directory` built with this VAE encoder, created when there is none yet.

    EncoderMismatch when the directory holds an index of another encoder."""
    directory = Path(directory)
    if not (directory / DB_NAME).exists():
        return Index.create(directory, encoder=encoder, index_type=index_type)
    index = Index.open(directory)
    try:
        index.check_encoder(encoder)
    except EncoderMismatch:
        index.close()
        raise
    index._encoder = encoder  # as Index.create does: no registry look-up of vae:<path> needed
    return index


def add_images(index, inputs: Sequence[str | Path], *, batch_size: int | None = None, progress=None):
    """Add image files / folders to an index of a VAE encoder through the normal image ingestion."""
    kwargs = {"progress": progress} if progress is not None else {}
    return index.add(read_inputs([str(p) for p in inputs], fmt="images"), batch_size=batch_size, **kwargs)


__all__ = ["VAEModel", "VAEEncoder", "train_vae", "load_vae", "load_vae_encoder", "vae_loss", "open_index",
           "add_images", "DEFAULTS", "DIGITS"]
