"""The commands about latent itself: demo (neighbours on the bundled models) and encoders (the
encoders it knows)."""

from __future__ import annotations

import time

import click

from latent.indexer import list_encoders
from latent.indexer.paths import cache_dir
from latent.search.demo import run_demo
from .common import echo_json, flags, hits_json, hits_table, progress_bars


@click.command()
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 50), help="Neighbours per query.")
def demo(k: int):
    """Nearest neighbours of a few words, sentences and photos on the bundled models (no network).

    The first run builds the cached indexes (all GloVe words, the demo sentences, the photos);
    later runs reuse them.

    \b
    Example:
        latent demo
        latent demo -k 3 --json
    """
    started = time.perf_counter()
    progress = progress_bars()
    try:
        results = run_demo(k=k, progress=progress)
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    if flags().json:
        echo_json({"results": [{"title": title, "hits": hits_json(hits)} for title, hits in results],
                   "cache": str(cache_dir()), "seconds": round(elapsed, 3)})
        return
    for title, hits in results:
        click.echo(f"\n{title}")
        click.echo(hits_table(hits))
    click.echo(f"\nDone in {elapsed:.1f}s (indexes cached in {cache_dir()})")


@click.command()
def encoders():
    """List the encoders.

    \b
    Example:
        latent encoders
        latent encoders --json
    """
    known = list_encoders()
    if flags().json:
        echo_json({"encoders": [{"name": name, "description": desc} for name, desc in known.items()]})
        return
    for name, desc in known.items():
        click.echo(f"{name:<20} {desc}")


COMMANDS = [demo, encoders]
