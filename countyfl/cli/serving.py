"""``countyfl serve``: run the clinician API under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from countyfl.cli.common import fail
from countyfl.errors import CountyflError

serve_app = typer.Typer(add_completion=False)


@serve_app.command()
def serve_command(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 8000,
    workers: Annotated[
        int,
        typer.Option(help="worker processes (each loads its own models)", min=1, max=64),
    ] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve predictions and referral advice over HTTP (OpenAPI docs at /docs).

    Settings come from the environment: COUNTYFL_JWT_SECRET_FILE (required: an owner-only
    file with a random secret of at least 32 bytes), COUNTYFL_DATABASE_URL or COUNTYFL_HOME,
    COUNTYFL_AUDIT_SIGNING_KEY_FILE (signs audit checkpoints automatically; default
    HOME/keys/audit-signing.key if it exists), COUNTYFL_TOKEN_LIFETIME_MINUTES,
    COUNTYFL_MAX_REQUEST_BYTES, COUNTYFL_MAX_BATCH_SIZE, COUNTYFL_LOGIN_FREE_FAILURES,
    COUNTYFL_ADDRESS_FREE_FAILURES, COUNTYFL_REFERRAL_RULES_FILE and
    COUNTYFL_DOCTOR_DIRECTORY_FILE. Put TLS in front (a reverse proxy) when HOST is not
    127.0.0.1: tokens and records travel in these requests.
    """
    import uvicorn

    from countyfl.serving.app import create_app
    from countyfl.settings import ServingSettings

    try:
        # Built here first so that a bad setting fails with a readable message, not in uvicorn.
        app = create_app(ServingSettings())
    except CountyflError as error:
        fail(error)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False)
    else:
        # Several workers need an import string; each builds its own app from the env.
        app.state.serving.close()
        uvicorn.run(
            "countyfl.serving.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            proxy_headers=False,
        )
