"""The `serve` command: the web page and JSON API of latent.search.server over indexes, until
interrupted."""

from __future__ import annotations

import click

from latent.indexer.errors import LatentError

from .common import echo_json, flags, progress_bars


@click.command()
@click.argument("directories", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but a loopback address needs --public.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--public", is_flag=True, help="Allow a non-loopback --host (then a token is required).")
@click.option("--token", envvar="LATENT_TOKEN", metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' (or ?token=TOKEN) on every request [env: LATENT_TOKEN].")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0.01, 1024),
              help="Largest image upload, in MiB.")
@click.option("--max-connections", default=256, show_default=True, type=click.IntRange(1, 100_000),
              help="Open connections at most; beyond, the one idle longest is closed, or a request gets 503.")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              metavar="SECONDS", help="Close a connection that sends no whole request head within this time.")
def serve(directories, host: str, port: int, public: bool, token: str | None, max_upload_mb: float,
          max_connections: int, header_timeout: float):
    """Serve DIRECTORIES (index folders or @words, @sentences, @photos) over HTTP: the web page
    at / and the JSON API under /api (schema at /openapi.json).

    Once listening, it says where on stderr; with --json, as {"message": ...} on stdout.

    \b
    Example:
        latent serve photos notes @words
        LATENT_TOKEN=... latent serve photos --host 0.0.0.0 --public
    """
    from latent.search.server import Limits, PortInUse, serve as run_server  # FastAPI loads with the server only

    progress = progress_bars()
    as_json = flags().json

    def announce(line: str) -> None:
        if as_json:
            echo_json({"message": line})
        else:
            click.echo(line, err=True)

    try:
        run_server(list(directories), host=host, port=port, token=token, public=public,
                   limits=Limits(max_upload_bytes=int(max_upload_mb * 2**20)), max_connections=max_connections,
                   header_timeout=header_timeout, progress=progress, announce=announce)
    except PortInUse as e:
        raise LatentError(f"port {e.port} is in use on {e.host}; try --port {e.free or 'N'} (a free one)") from None
    finally:
        progress.close()


COMMANDS = [serve]
