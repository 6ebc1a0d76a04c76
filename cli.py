"""The `latent` command: one click group holding the commands of latent.commands and those that
plugins register (`latent vae`, `latent gan`), and main(), the console script. The error policy
and the flags every command takes are latent.commands.common.Group's."""

from __future__ import annotations

import os
import sys

import click

from latent.commands import explore, manage, misc, query, serve, tools
from latent.commands.common import Group
from latent.indexer.plugins import call_hook


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="latent-search")
def cli():
    """latent: search and explore the latent spaces of words, sentences and images.

    Indexes are directories holding a SQLite store (items, metadata, vectors) and a
    FAISS index derived from it. Encoders: minilm (sentences, default), glove (words),
    efficientnet and conse (images; conse also takes text), st:<sentence-transformers
    model or path>, clip:<arch>/<pretrained or file>; `latent encoders` lists them.

    -q/--quiet, --json and --debug go before the command or after its arguments.

    \b
    Example:
        latent create notes --encoder minilm
        latent add notes notes.jsonl --key-field id
        latent search notes "how do vaccines work" -k 5
    """


for module in (manage, query, tools, explore, serve, misc):
    for command in module.COMMANDS:
        cli.add_command(command)
call_hook("register_commands", cli)


def main() -> None:
    """The `latent` command. It ends with os._exit once its output is flushed: every index
    is closed by then (each write is committed, and durable, before the command returns),
    and skipping the interpreter's teardown saves about 0.3 s and 120 MiB of peak memory
    that torch's teardown touches."""
    try:
        cli(prog_name="latent")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `latent ... | head`: the reader left
        pass
    finally:
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
