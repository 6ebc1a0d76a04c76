"""A small DCGAN on grey size x size images, and walks through its latent space.

Generator: z ~ N(0, I) -> dense -> (2w, s/4, s/4) -> transposed convolution (stride 2,
batch norm, ReLU) -> transposed convolution to 1 channel -> tanh, so images are in
[-1, 1] (`generate` maps them to [0, 1]). Discriminator: two stride-2 convolutions with
LeakyReLU (batch norm on the second) and a dense layer to one logit. Both train with
Adam (lr 2e-4, beta1 0.5) on the non-saturating logistic loss; real labels are smoothed
to 0.9 (one-sided). After every epoch the discriminator and generator losses are reported,
with the discriminator's mean probability on real and on generated images.

Attribute directions: generated samples are labelled by the engine's nearest-neighbour
search in an index of labelled real images (majority label of the k nearest); the
direction from class A to class B is mean(z labelled B) - mean(z labelled A), and moving a
sample's z along it is meant to move its label from A toward B. `evaluate_direction`
measures that against a random direction of the same length.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latent.indexer.errors import EncoderMismatch, InputError, LatentError
from latent.indexer.index import Index
from .common import (THREADS, Clock, TrainedModel, OnEpoch, batches, generator, no_epoch, positive, seeded, torch_threads,
                     training_images)
from .data import DIGITS, Dataset, check_size, label_images, load_digits, reference_index
from .files import ModelFileError, load_model, load_state, require, save_model

KIND = "gan"
DEFAULTS = {"latent_dim": 32, "width": 32, "epochs": 120, "batch_size": 64, "lr": 2e-4, "seed": 0}
REAL_LABEL = 0.9


class Generator(nn.Module):
    def __init__(self, size: int, latent_dim: int, width: int):
        super().__init__()
        self.base, self.width = size // 4, width
        self.project = nn.Sequential(nn.Linear(latent_dim, 2 * width * self.base * self.base, bias=False),
                                     nn.BatchNorm1d(2 * width * self.base * self.base), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.net(self.project(z).view(len(z), 2 * self.width, self.base, self.base))


class Discriminator(nn.Module):
    def __init__(self, size: int, width: int):
        super().__init__()
        base = size // 4
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * base * base, 1))

    def forward(self, x):
        return self.net(x)[:, 0]


def _init(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) weights, batch-norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@dataclass(kw_only=True)
class GANModel(TrainedModel):
    """A trained GAN: generator and discriminator (eval mode), config, per-epoch history."""

    generator: Generator
    discriminator: Discriminator

    def sample_z(self, n: int, *, seed: int = 0) -> np.ndarray:
        """n latent vectors from N(0, I), reproducibly for a seed: float32 (n, latent_dim)."""
        n = positive(n, "the number of samples")
        return torch.randn(n, self.latent_dim, generator=generator(seed)).numpy()

    def generate_raw(self, z: np.ndarray) -> np.ndarray:
        """The generator's own output for z: (n, 1, s, s) in [-1, 1] (tanh)."""
        z = self.latent_batch(z, "GAN generates from", InputError)
        out = []
        with torch.inference_mode(), torch_threads(THREADS):
            for start in range(0, len(z), 1024):
                out.append(self.generator(torch.from_numpy(np.ascontiguousarray(z[start:start + 1024]))).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1, self.size, self.size), np.float32)

    def generate(self, z: np.ndarray) -> np.ndarray:
        """Images (n, s, s) in [0, 1] for latent vectors (n, latent_dim)."""
        return ((self.generate_raw(z)[:, 0] + 1.0) / 2.0).clip(0.0, 1.0).astype(np.float32)

    def sample(self, n: int, *, seed: int = 0) -> np.ndarray:
        return self.generate(self.sample_z(n, seed=seed))

    def interpolate(self, rows: int = 6, steps: int = 10, *, seed: int = 0) -> np.ndarray:
        """`rows` straight lines between pairs of random latent vectors, `steps` points each (ends
        included), decoded: (rows, steps, s, s)."""
        rows, steps = positive(rows, "rows"), positive(steps, "steps")
        if steps < 2:
            raise InputError("an interpolation needs at least 2 steps (the two ends)")
        ends = self.sample_z(2 * rows, seed=seed).reshape(rows, 2, self.latent_dim)
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
        z = (1 - t) * ends[:, :1] + t * ends[:, 1:]
        return self.generate(z.reshape(rows * steps, self.latent_dim)).reshape(rows, steps, self.size, self.size)

    def state(self) -> dict:
        state = {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        state.update({f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()})
        return state

    def save(self, path: str | Path) -> Path:
        self.path = save_model(path, KIND, self.config, self.state(), self.history)
        return self.path


def train_gan(data: Dataset | np.ndarray, *, latent_dim: int = DEFAULTS["latent_dim"],
              width: int = DEFAULTS["width"], epochs: int = DEFAULTS["epochs"],
              batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"], seed: int = DEFAULTS["seed"],
              on_epoch: OnEpoch = no_epoch, threads: int | None = THREADS) -> GANModel:
    """Train a DCGAN on a Dataset or images (n, [1,] s, s) in [0, 1]; deterministic for a seed.

    `on_epoch` gets {"epoch", "epochs", "d_loss", "g_loss", "d_real", "d_fake", "seconds"}:
    mean losses over the epoch's batches and the discriminator's mean probability of "real"
    on real and on generated images."""
    source = data.source if isinstance(data, Dataset) else "arrays"
    x = training_images(data.images if isinstance(data, Dataset) else data, "the GAN") * 2.0 - 1.0
    epochs, batch_size = positive(epochs, "epochs"), positive(batch_size, "batch size")
    lr = positive(lr, "learning rate", float)
    size = check_size(int(x.shape[-1]))
    config = {"size": size, "latent_dim": positive(latent_dim, "latent_dim"), "width": positive(width, "width"),
              "data": source, "images": len(x), "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "seed": int(seed)}
    with torch_threads(threads):
        with seeded(seed):
            gen_net = Generator(size, config["latent_dim"], config["width"])
            disc_net = Discriminator(size, config["width"])
            _init(gen_net)
            _init(disc_net)
        history = _fit(gen_net, disc_net, x, config, on_epoch)
    gen_net.eval()
    disc_net.eval()
    config["train_seconds"] = history[-1]["seconds"]
    config["threads"] = threads
    return GANModel(generator=gen_net, discriminator=disc_net, config=config, history=history)


def _fit(gen_net: Generator, disc_net: Discriminator, x, config: dict, on_epoch: OnEpoch) -> list[dict]:
    epochs, lr = config["epochs"], config["lr"]
    rng = generator(config["seed"] + 1)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc_net.parameters(), lr=lr, betas=(0.5, 0.999))
    history: list[dict] = []
    clock = Clock()
    gen_net.train()
    disc_net.train()
    for epoch in range(1, epochs + 1):
        sums, count = np.zeros(4), 0
        for idx in batches(len(x), config["batch_size"], rng):
            real = x[idx]
            n = len(real)
            z = torch.randn(n, config["latent_dim"], generator=rng)
            fake = gen_net(z)
            # discriminator: real -> 0.9 (one-sided label smoothing), generated -> 0
            d_real, d_fake = disc_net(real), disc_net(fake.detach())
            d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, REAL_LABEL))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            # generator: make the discriminator say "real" (the non-saturating loss)
            d_gen = disc_net(fake)
            g_loss = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            sums += [d_loss.item(), g_loss.item(), torch.sigmoid(d_real).mean().item(),
                     torch.sigmoid(d_fake).mean().item()]
            count += 1
        d_loss_avg, g_loss_avg, p_real, p_fake = (sums / max(count, 1)).tolist()
        if not (np.isfinite(d_loss_avg) and np.isfinite(g_loss_avg)):
            raise InputError(f"GAN training diverged at epoch {epoch}; lower the learning rate")
        figures = {"epoch": epoch, "epochs": epochs, "d_loss": round(d_loss_avg, 4), "g_loss": round(g_loss_avg, 4),
                   "d_real": round(p_real, 4), "d_fake": round(p_fake, 4), "seconds": clock.seconds()}
        history.append(figures)
        on_epoch(figures)
    return history


def load_gan(path: str | Path) -> GANModel:
    """A GAN model file (weights-only load); ModelFileError when it is not one."""
    config, state, history = load_model(path, KIND)
    size, latent_dim, width = (require(config, k, int, path, KIND) for k in ("size", "latent_dim", "width"))
    try:
        check_size(size)
    except InputError:
        raise ModelFileError(f"{path} is a damaged latent GAN model: image size {size!r}; retrain it") from None
    gen_net, disc_net = Generator(size, latent_dim, width), Discriminator(size, width)
    parts = {"generator": {}, "discriminator": {}}
    for name, tensor in state.items():
        part, _, rest = name.partition(".")
        if part not in parts:
            raise ModelFileError(f"{path} is a damaged latent GAN model: unexpected weight {name!r}; retrain it")
        parts[part][rest] = tensor
    load_state(gen_net, parts["generator"], path, KIND)
    load_state(disc_net, parts["discriminator"], path, KIND)
    gen_net.eval()
    disc_net.eval()
    return GANModel(generator=gen_net, discriminator=disc_net, config=config, history=history, path=Path(path))


# -- attribute directions ---------------------------------------------------------------------------
@dataclass
class Direction:
    """A direction in a GAN's latent space from one label to another, and how it was found."""

    vector: np.ndarray
    source: str
    target: str
    counts: dict[str, int]  # labels of the generated samples it was found from
    samples: int
    k: int
    field: str = "label"

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    def as_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "norm": round(self.norm, 4), "samples": self.samples,
                "k": self.k, "field": self.field, "counts": self.counts}


MIN_PER_CLASS = 5


@contextlib.contextmanager
def reference(gan: GANModel, index_dir: str | Path | None = None):
    """(index, encoder) that labels a GAN's samples: the image index in `index_dir`, or, for a GAN
    trained on the digits, a temporary flat index of the digits as pixel vectors at the GAN's size."""
    if index_dir is not None:
        with Index.open(index_dir) as index:
            if "image" not in index.encoder.modalities:
                raise EncoderMismatch(f"{index_dir} uses encoder {index.encoder_name!r}, which cannot encode "
                                      "images; give an image index (e.g. one made by `latent vae encode`)")
            yield index, index.encoder
        return
    if gan.config.get("data") != DIGITS:
        raise InputError(f"this GAN was trained on {gan.config.get('data')}, which has no labels; give "
                         "an image index whose items carry labels")
    with tempfile.TemporaryDirectory(prefix="latent-digits-") as tmp:
        index = reference_index(Path(tmp) / "index", load_digits(gan.size))
        try:
            yield index, index.encoder
        finally:
            index.close()


def find_direction(gan: GANModel, index, source, target, *, samples: int = 2000, seed: int = 0, k: int = 10,
                   field: str = "label", encoder=None) -> Direction:
    """mean(z labelled target) - mean(z labelled source) over `samples` generated samples, each
    labelled by the majority label of its k nearest neighbours in `index` (see `label_images`)."""
    source, target = str(source), str(target)
    if source == target:
        raise InputError(f"source and target are both {source!r}; give two different labels")
    z = gan.sample_z(samples, seed=seed)
    labels = np.array(label_images(index, gan.generate(z), encoder=encoder, k=k, field=field), dtype=object)
    counts = {str(lab): int(c) for lab, c in zip(*np.unique(labels.astype(str), return_counts=True))}
    for name, label in (("source", source), ("target", target)):
        found = int((labels == label).sum())
        if found < MIN_PER_CLASS:
            seen = ", ".join(f"{lab}: {c}" for lab, c in sorted(counts.items(), key=lambda kv: -kv[1])[:10])
            raise LatentError(
                f"only {found} of {samples} generated samples look like {field} {label!r} ({name}; need "
                f"{MIN_PER_CLASS}); labels seen: {seen}. Generate more samples, train the GAN "
                "longer, or choose labels it generates")
    vector = z[labels == target].mean(0) - z[labels == source].mean(0)
    return Direction(vector=vector.astype(np.float32), source=source, target=target, counts=counts,
                     samples=int(samples), k=int(k), field=field)


def source_samples(gan: GANModel, index, label, n: int, *, seed: int = 1, k: int = 10, field: str = "label",
                   encoder=None, pool: int = 2000) -> np.ndarray:
    """Up to n latent vectors whose generated images are labelled `label` (from `pool` samples)."""
    z = gan.sample_z(max(pool, n), seed=seed)
    labels = label_images(index, gan.generate(z), encoder=encoder, k=k, field=field)
    chosen = z[[lab == str(label) for lab in labels]][:n]
    if len(chosen) == 0:
        raise LatentError(f"none of {len(z)} generated samples looks like {field} {str(label)!r}; "
                          "train the GAN longer or choose a label it generates")
    return chosen


def walk(gan: GANModel, z: np.ndarray, vector: np.ndarray, strengths: Sequence[float]) -> np.ndarray:
    """Images of each z moved by strength * vector: (len(z), len(strengths), s, s)."""
    z = np.asarray(z, dtype=np.float32)
    s = np.asarray(strengths, dtype=np.float32)
    moved = z[:, None, :] + s[None, :, None] * np.asarray(vector, dtype=np.float32)[None, None, :]
    images = gan.generate(moved.reshape(-1, gan.latent_dim))
    return images.reshape(len(z), len(s), gan.size, gan.size)


def evaluate_direction(gan: GANModel, index, direction: Direction, z: np.ndarray, *, strength: float = 1.0,
                       seed: int = 0, encoder=None) -> dict:
    """How often moving source-labelled z by strength * direction gives the target label, against a
    random direction of the same length (seeded): fractions of len(z)."""
    z = np.asarray(z, dtype=np.float32)
    rng = np.random.default_rng(seed)
    random_vector = rng.standard_normal(direction.vector.shape).astype(np.float32)
    random_vector *= direction.norm / max(float(np.linalg.norm(random_vector)), 1e-12)
    out = {"n": len(z), "strength": float(strength)}
    for name, vector in (("before", np.zeros_like(direction.vector)), ("direction", direction.vector),
                         ("random", random_vector)):
        labels = label_images(index, gan.generate(z + strength * vector), encoder=encoder, k=direction.k,
                              field=direction.field)
        out[name] = {"target": sum(lab == direction.target for lab in labels) / max(len(z), 1),
                     "source": sum(lab == direction.source for lab in labels) / max(len(z), 1)}
    return out


__all__ = ["GANModel", "Generator", "Discriminator", "Direction", "train_gan", "load_gan", "find_direction",
           "source_samples", "walk", "evaluate_direction", "reference", "DEFAULTS"]
