"""latent.generative as a plugin of latent (entry point `latent.plugins`): the `vae:` encoder
family and, for the CLI, the `vae` and `gan` command groups."""

from __future__ import annotations

import os

from latent.indexer.errors import EncoderUnavailable


def _vae(path: str):
    from .vae import load_vae_encoder  # torch loads with the first VAE, not with latent

    if not os.path.exists(path):  # an index names its model by its absolute path: it may have moved
        raise EncoderUnavailable(f"the VAE model {path} is not there (moved or deleted?): put it back there, or "
                                 "point the index at where it is now with `latent vae relink DIRECTORY MODEL`")
    return load_vae_encoder(path)


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def register_encoders(register) -> None:
    # cached by the loader itself, which sees a model file retrained on disk
    register("vae:", _vae, "the latent means of a VAE trained with `latent vae train` (images)",
             canonical=_absolute, cached=False, argument="<model file>")


def register_commands(cli) -> None:
    from .cli import gan, vae  # the command line loads with the `latent` command, not with the encoders

    cli.add_command(vae)
    cli.add_command(gan)
