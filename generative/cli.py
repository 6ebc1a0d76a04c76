"""The `latent vae …` and `latent gan …` commands: train, sample, interpolate, encode into an
index, and attribute directions. latent.generative.plugin registers them with the `latent` group."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from latent.commands.common import Group, echo_json, flags, k_option, progress_bars
from latent.indexer.index import Index
from .data import DIGITS, add_dataset, load_dataset, load_digits, load_reference
from .files import check_model_path
from .grids import chunk, save_grid

# the models' modules (.vae, .gan) import torch: each command imports them when it runs


def _epoch_printer(line):
    """An on_epoch callback: `line(figures)` on stderr about ten times per run (and the first and last
    epoch), unless --quiet."""
    quiet = flags().quiet

    def on_epoch(figures: dict) -> None:
        every = max(1, figures["epochs"] // 10)
        if not quiet and (figures["epoch"] % every == 0 or figures["epoch"] in (1, figures["epochs"])):
            click.echo(line(figures), err=True)

    return on_epoch


def _png_option(f):
    return click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="The PNG file to write.")(f)


def _train_options(f):
    for option in reversed([
        click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="The model file to write."),
        click.option("--size", type=click.IntRange(8, 64), help="Image size (a multiple of 4) "
                     "[default: 16 for digits (8x8 upsampled), 28 for folders]."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of weights, batches and noise."),
        click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
                     help="Torch threads (1 is fastest on a busy machine, and reproducible everywhere)."),
    ]):
        f = option(f)
    return f


def _sample_options(f):
    for option in reversed([
        click.option("-n", "count", default=64, show_default=True, type=click.IntRange(1, 10_000)),
        click.option("--cols", default=8, show_default=True, type=click.IntRange(1, 1000)),
        click.option("--seed", default=0, show_default=True, type=int),
    ]):
        f = option(f)
    return f


def _report_training(model, dataset, output: Path, kind: str, losses) -> None:
    """Save a trained model and say so: JSON, or one line with `losses(last epoch)`."""
    model.save(output)
    last = model.history[-1]
    if flags().json:
        echo_json({"model": str(output), "config": model.config, "final": last, "skipped": len(dataset.skipped)})
    else:
        click.echo(f"Trained a {kind} on {len(dataset)} images ({model.size}x{model.size}, latent "
                   f"{model.latent_dim}-d) in {last['seconds']:.1f}s: {losses(last)}; saved {output}")
    if dataset.skipped:
        click.echo(f"Skipped {len(dataset.skipped)} file(s), e.g. {dataset.skipped[0].source}: "
                   f"{dataset.skipped[0].reason}", err=True)


def _grid_saved(info: dict, what: str) -> None:
    """Say that a picture was written: its path, what it shows, its size."""
    if flags().json:
        echo_json({**info, "shows": what})
        return
    click.echo(f"Wrote {info['path']}: {what} ({info['width']}x{info['height']} px, {info['bytes']:,} bytes)")


@click.group(cls=Group)
def vae():
    """A variational autoencoder on small grey images: train it, index images by their
    latent means (encoder vae:<model path>), interpolate between images, sample the prior.

    DATA is `digits` (scikit-learn's 1,797 handwritten digits, 8x8, upsampled) or a
    folder of images (grey, resized to the model size).

    \b
    Example:
        latent vae train digits -o digits.vae
        latent vae encode digits.vae digits-idx digits
        latent similar digits-idx --key digits/00042 -k 5 --where label=3
        latent vae interpolate digits.vae digits:0 digits:42 -o path.png
        latent vae sample digits.vae -o samples.png
    """


@vae.command("train")
@click.argument("data")
@_train_options
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--latent-dim", default=10, show_default=True, type=click.IntRange(1, 1024),
              help="Dimensions of the latent space (and of the index vectors).")
@click.option("--width", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="Channels of the first convolution (the second has twice as many).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(2, 100_000))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Adam learning rate (cosine-annealed to 5% of it).")
@click.option("--beta", default=1.0, show_default=True, type=click.FloatRange(0, 100),
              help="Weight of the KL term.")
def vae_train(data: str, output: Path, size, seed: int, threads: int, epochs: int,
              latent_dim: int, width: int, batch_size: int, lr: float, beta: float):
    """Train a VAE on DATA (`digits` or a folder of images) and save it to -o MODEL.

    Every tenth of the run prints the epoch's loss = reconstruction (binary cross-entropy,
    summed over pixels) + KL divergence from the prior, per image.

    \b
    Example:
        latent vae train digits -o digits.vae
        latent vae train ~/glyphs --size 28 --epochs 60 -o glyphs.vae
    """
    from .vae import train_vae

    check_model_path(output, "vae")
    dataset = load_dataset(data, size)
    model = train_vae(dataset, epochs=epochs, latent_dim=latent_dim, width=width, batch_size=batch_size, lr=lr,
                      beta=beta, seed=seed, threads=threads, on_epoch=_epoch_printer(lambda f: (
                          f"epoch {f['epoch']:>4}/{f['epochs']}  loss {f['loss']:8.3f} = reconstruction "
                          f"{f['recon']:8.3f} + KL {f['kl']:7.3f}  ({f['seconds']:.1f}s)")))
    _report_training(model, dataset, output, "VAE", lambda last: (
        f"loss {last['loss']:.2f} = reconstruction {last['recon']:.2f} + KL {last['kl']:.2f}"))


@vae.command("encode")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("data", nargs=-1, required=True)
@click.option("--index", "index_type", default="auto", show_default=True, metavar="TYPE",
              help="Index type when DIRECTORY is created (see `latent create`).")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Images per batch and transaction.")
def vae_encode(model: Path, directory: Path, data, index_type: str, batch_size):
    """Add DATA (`digits`, folders or image files) to the index DIRECTORY by their latent means
    under MODEL; DIRECTORY is created (encoder vae:<MODEL's absolute path>) when it holds no index.

    Digits get keys digits/00000.. and metadata {"label": <digit>}; image files are ingested
    like `latent add` (keys are paths relative to the folder given).

    \b
    Example:
        latent vae encode digits.vae digits-idx digits
        latent similar digits-idx --key digits/00042 -k 10 --where label=3
    """
    from .vae import add_images, load_vae_encoder, open_index

    encoder = load_vae_encoder(model)
    progress = progress_bars()
    started = time.perf_counter()
    added = replaced = unchanged = skipped = 0
    examples = []
    with open_index(directory, encoder, index_type=index_type) as index:
        try:
            for source in data:
                if source == DIGITS and not Path(source).exists():
                    report = add_dataset(index, encoder, load_digits(encoder.size), progress=progress)
                else:
                    report = add_images(index, [source], batch_size=batch_size, progress=progress)
                added, replaced, unchanged = (added + report.added, replaced + report.replaced,
                                              unchanged + report.unchanged)
                skipped += report.skipped
                examples.extend(report.skip_examples())
        finally:
            progress.close()
        count = index.count()
    elapsed = time.perf_counter() - started
    if flags().json:
        echo_json({"encoder": encoder.name, "added": added, "replaced": replaced, "unchanged": unchanged,
                   "skipped": skipped, "count": count, "seconds": round(elapsed, 3)})
        return
    click.echo(f"Added {added}, replaced {replaced}, unchanged {unchanged}, skipped {skipped} in "
               f"{elapsed:.1f}s; {count} items in {directory} (encoder {encoder.name}, {encoder.dim}-d)")
    for s in examples[:20]:
        click.echo(f"  {s.source}: {s.reason}", err=True)


@vae.command("interpolate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("a")
@click.argument("b")
@_png_option
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2, 200),
              help="Decoded points on the line, both ends included.")
@click.option("--scale", type=click.IntRange(1, 64), help="Pixels per image pixel [default: cells of ~64 px].")
def vae_interpolate(model: Path, a: str, b: str, output: Path, steps: int, scale):
    """Decode the straight line between the latent means of images A and B into a strip:
    A, then STEPS decoded points, then B.

    A and B are image files or digits by index (digits:42).

    \b
    Example:
        latent vae interpolate digits.vae digits:0 digits:42 -o path.png --steps 12
    """
    from .vae import load_vae

    vae_model = load_vae(model)
    (image_a, name_a), (image_b, name_b) = (load_reference(r, vae_model.size) for r in (a, b))
    path = vae_model.interpolate(image_a, image_b, steps)
    info = save_grid([[image_a[0], *path, image_b[0]]], output, scale=scale, wide_after=(0, steps))
    _grid_saved(info, f"{name_a}, {steps} decoded points, {name_b}")


@vae.command("sample")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_png_option
@_sample_options
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(0, 10),
              help="Standard deviation of the prior draws.")
@click.option("--scale", type=click.IntRange(1, 64), help="Pixels per image pixel [default: cells of ~64 px].")
def vae_sample(model: Path, output: Path, count: int, cols: int, seed: int, temperature: float, scale):
    """Decode N draws from the prior N(0, I) of MODEL into a grid.

    \b
    Example:
        latent vae sample digits.vae -o samples.png -n 100 --cols 10 --seed 3
    """
    from .vae import load_vae

    images = load_vae(model).sample(count, seed=seed, temperature=temperature)
    _grid_saved(save_grid(chunk(images, cols), output, scale=scale), f"{count} samples, seed {seed}")


@vae.command("relink")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
def vae_relink(directory: Path, model: Path):
    """Point the index DIRECTORY at its VAE model's new place MODEL (the index names its model
    by its absolute path). Refused unless MODEL is the very model the index was built with.

    \b
    Example:
        latent vae relink digits-idx ~/models/digits.vae
    """
    with Index.open(directory) as index:
        index.relink_encoder(f"vae:{model}")
        name = index.encoder_name
    if flags().json:
        echo_json({"directory": str(directory), "encoder": name})
    else:
        click.echo(f"{directory} now uses {name}")


@click.group(cls=Group)
def gan():
    """A small DCGAN on small grey images: train it, walk straight lines in its latent space,
    and move samples along an attribute direction found by nearest-neighbour labels.

    \b
    Example:
        latent gan train digits -o digits.gan
        latent gan sample digits.gan -o samples.png
        latent gan interpolate digits.gan -o lines.png
        latent gan direction digits.gan --from 1 --to 7 -o one-to-seven.png
    """


@gan.command("train")
@click.argument("data")
@_train_options
@click.option("--epochs", default=120, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--latent-dim", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option("--width", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="Channels of the last generator / first discriminator layer (the other has twice as many).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(2, 100_000))
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(0, 1, min_open=True))
def gan_train(data: str, output: Path, size, seed: int, threads: int, epochs: int,
              latent_dim: int, width: int, batch_size: int, lr: float):
    """Train a DCGAN on DATA (`digits` or a folder of images) and save it to -o MODEL.

    Every tenth of the run prints the epoch's discriminator and generator losses and the
    discriminator's mean P(real) on real and on generated images.

    \b
    Example:
        latent gan train digits -o digits.gan --epochs 120
    """
    from .gan import train_gan

    check_model_path(output, "gan")
    dataset = load_dataset(data, size)
    model = train_gan(dataset, epochs=epochs, latent_dim=latent_dim, width=width, batch_size=batch_size, lr=lr,
                      seed=seed, threads=threads, on_epoch=_epoch_printer(lambda f: (
                          f"epoch {f['epoch']:>4}/{f['epochs']}  D loss {f['d_loss']:.3f}  G loss {f['g_loss']:.3f}"
                          f"  D(real) {f['d_real']:.2f}  D(fake) {f['d_fake']:.2f}  ({f['seconds']:.1f}s)")))
    _report_training(model, dataset, output, "GAN", lambda last: (
        f"D loss {last['d_loss']:.3f}, G loss {last['g_loss']:.3f}, D(real) {last['d_real']:.2f}, "
        f"D(fake) {last['d_fake']:.2f}"))


@gan.command("sample")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_png_option
@_sample_options
@click.option("--scale", type=click.IntRange(1, 64), help="Pixels per image pixel [default: cells of ~64 px].")
def gan_sample(model: Path, output: Path, count: int, cols: int, seed: int, scale):
    """Generate N images from random latent vectors into a grid.

    \b
    Example:
        latent gan sample digits.gan -o samples.png -n 100 --cols 10
    """
    from .gan import load_gan

    images = load_gan(model).sample(count, seed=seed)
    _grid_saved(save_grid(chunk(images, cols), output, scale=scale), f"{count} samples, seed {seed}")


@gan.command("interpolate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_png_option
@click.option("--rows", default=6, show_default=True, type=click.IntRange(1, 1000), help="Lines, one per row.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2, 200),
              help="Points per line, both ends included.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the lines' end points.")
@click.option("--scale", type=click.IntRange(1, 64), help="Pixels per image pixel [default: cells of ~64 px].")
def gan_interpolate(model: Path, output: Path, rows: int, steps: int, seed: int, scale):
    """Decode straight lines between pairs of random latent vectors: one row per line.

    \b
    Example:
        latent gan interpolate digits.gan -o lines.png --rows 8 --steps 12 --seed 1
    """
    from .gan import load_gan

    grid = load_gan(model).interpolate(rows, steps, seed=seed)
    _grid_saved(save_grid([list(row) for row in grid], output, scale=scale),
                f"{rows} lines of {steps} points, seed {seed}")


@gan.command("direction")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "source", required=True, help="The label to move away from, e.g. 1.")
@click.option("--to", "target", required=True, help="The label to move toward, e.g. 7.")
@_png_option
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              help="An image index whose items carry the label (e.g. one made by `latent vae encode`) "
                   "[default: the digits as pixel vectors, for models trained on digits].")
@click.option("--label-field", default="label", show_default=True, help="The metadata field holding labels.")
@click.option("--samples", default=2000, show_default=True, type=click.IntRange(10, 1_000_000),
              help="Generated samples labelled to find the direction.")
@k_option
@click.option("--rows", default=6, show_default=True, type=click.IntRange(1, 100),
              help="Samples labelled --from to move, one per row.")
@click.option("--steps", default=7, show_default=True, type=click.IntRange(2, 100))
@click.option("--strength", default=1.5, show_default=True, type=click.FloatRange(0, 100),
              help="How far the last column moves, in units of the direction (1: from the --from mean to "
                   "the --to mean).")
@click.option("--seed", default=0, show_default=True, type=int)
def gan_direction(model: Path, source: str, target: str, output: Path, index_dir, label_field: str, samples: int,
                  k: int, rows: int, steps: int, strength: float, seed: int):
    """Find the latent direction from label --from to label --to and move samples along it.

    Generated samples are labelled by their k nearest neighbours in a labelled index (the
    engine's own search); the direction is mean(z labelled --to) - mean(z labelled --from).
    Rows of the picture are samples labelled --from, moved by 0 .. --strength times the
    direction. Also measured on up to 200 such samples: how often the move gives label --to,
    against a random direction of the same length.

    \b
    Example:
        latent gan direction digits.gan --from 1 --to 7 -o one-to-seven.png
        latent gan direction digits.gan --from 0 --to 6 --index digits-idx -o zero-to-six.png
    """
    from .gan import evaluate_direction, find_direction, load_gan, reference, source_samples, walk

    gan_model = load_gan(model)
    with reference(gan_model, index_dir) as (index, encoder):
        opts = {"k": k, "field": label_field, "encoder": encoder}
        direction = find_direction(gan_model, index, source, target, samples=samples, seed=seed, **opts)
        moved = source_samples(gan_model, index, source, max(rows, 200), seed=seed + 1, **opts)
        measured = evaluate_direction(gan_model, index, direction, moved, strength=strength, seed=seed,
                                      encoder=encoder)
    grid = walk(gan_model, moved[:rows], direction.vector, np.linspace(0.0, strength, steps))
    info = save_grid([list(row) for row in grid], output, wide_after=(0,))
    if flags().json:
        echo_json({"direction": direction.as_dict(), "measured": measured, "picture": info})
        return
    _grid_saved(info, f"{len(grid)} samples labelled {source}, moved 0 to {strength:g} x the direction")
    d, r = measured["direction"], measured["random"]
    click.echo(f"Direction {source} -> {target}: |d| = {direction.norm:.2f}, from {direction.samples} samples "
               f"({direction.counts.get(source, 0)} labelled {source}, {direction.counts.get(target, 0)} labelled "
               f"{target}). Moving {measured['n']} samples labelled {source} by {strength:g} x d: labelled {target} "
               f"{d['target']:.0%} (random direction of the same length: {r['target']:.0%}), still {source} "
               f"{d['source']:.0%} (random: {r['source']:.0%})")
