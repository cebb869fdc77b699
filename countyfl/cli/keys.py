"""``countyfl keys``: the CKKS key ceremony, and what existing keys are (never their bytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from countyfl.cli.common import fail, stdout
from countyfl.errors import CountyflError

keys_app = typer.Typer(
    help="CKKS key material for encrypted aggregation.", no_args_is_help=True, add_completion=False
)


@keys_app.command("init")
def keys_init(
    out: Annotated[Path, typer.Option("--out", help="folder for the key files")] = Path("keys"),
    force: Annotated[bool, typer.Option(help="replace existing keys")] = False,
) -> None:
    """Key ceremony: the institutions' secret context and the aggregator's public one."""
    from countyfl.privacy.he.keys import init_keys

    try:
        manifest = init_keys(out, force=force)
    except CountyflError as error:
        fail(error)
    _print_keys(out, manifest)
    stdout().print(
        "Give the secret context to the institutions only (over a secure channel); the "
        "county aggregator gets the public context."
    )


@keys_app.command("show")
def keys_show(
    directory: Annotated[Path, typer.Option("--dir", help="folder written by keys init")] = Path(
        "keys"
    ),
) -> None:
    """Parameters and fingerprints of existing keys (never any key bytes)."""
    import json

    from countyfl.privacy.he.keys import (
        KEYS_RECORD_FILE,
        PUBLIC_CONTEXT_FILE,
        fingerprint,
        load_public_context,
    )

    manifest_path = directory / KEYS_RECORD_FILE
    if not manifest_path.is_file():
        fail(f"{manifest_path} does not exist; run `countyfl keys init`")
    manifest = json.loads(manifest_path.read_text())
    try:
        actual = fingerprint(load_public_context(directory / PUBLIC_CONTEXT_FILE))
    except CountyflError as error:
        fail(error)
    _print_keys(directory, manifest)
    if actual != manifest["fingerprint"]:
        fail(
            f"the public context's fingerprint is {actual}, not the manifest's: the files "
            "were replaced or mixed up"
        )


def _print_keys(directory: Path, manifest: dict[str, Any]) -> None:
    parameters = manifest["parameters"]
    table = Table("item", "value", title=f"CKKS keys in {directory}")
    table.add_row("ring degree", str(parameters["poly_modulus_degree"]))
    table.add_row("coefficient moduli (bits)", str(parameters["coeff_mod_bit_sizes"]))
    table.add_row("scale", f"2^{parameters['global_scale_bits']}")
    table.add_row("institutions' secret context", manifest["secret-context"])
    table.add_row("aggregator's public context", manifest["public-context"])
    stdout().print(table)
    stdout().print(f"fingerprint (sha256 of the public key): {manifest['fingerprint']}")
