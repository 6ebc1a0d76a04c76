"""Plugins: packages that add encoders or CLI commands through the `latent.plugins` entry
point group. A plugin module defines any of these hooks, each called once per process:

    def register_encoders(register):       # register(name, factory, description) or
        register("vae:", load, "...")       #   a prefix ending in ":" whose factory takes the rest
    def register_commands(cli):             # cli is the click group of the `latent` command
        cli.add_command(my_command)

latent's own optional parts (the VAE and GAN in latent.generative) are plugins too, so the
core never names them.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from types import ModuleType

GROUP = "latent.plugins"
_loaded: list[ModuleType] | None = None
_called: set[tuple[str, int]] = set()


def plugins() -> list[ModuleType]:
    """The plugin modules named by installed entry points, imported once, in name order."""
    global _loaded
    if _loaded is None:
        _loaded = [import_module(ep.value) for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name)]
    return _loaded


def call_hook(name: str, *args) -> None:
    """Call hook `name` of every plugin that defines it, once per target (the first argument)."""
    for module in plugins():
        hook = getattr(module, name, None)
        marker = (f"{module.__name__}.{name}", id(args[0]) if args else 0)
        if hook is not None and marker not in _called:
            _called.add(marker)
            hook(*args)
