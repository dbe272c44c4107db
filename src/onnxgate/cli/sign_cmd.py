"""`onnxgate sign BUNDLE --key KEY`: sign a bundle's files and claim (an in-toto statement in a DSSE envelope,
``onnxgate.sig`` in the bundle); `onnxgate sign --generate-key KEY`: make a key pair (KEY, KEY.pub)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .common import console, finish, progress


def sign(
    bundle: Path = typer.Argument(None, help="The bundle folder to sign (written by `onnxgate bundle` / `run`)."),
    key: Path = typer.Option(None, "--key", help="The private key to sign with (PEM, ECDSA P-256 or Ed25519; an "
                             "encrypted key takes its password from $ONNXGATE_SIGN_PASSWORD)."),
    generate_key: Path = typer.Option(None, "--generate-key", help="Write a new ECDSA P-256 key pair: the private "
                                      "key to this path (mode 0600), the public key to PATH.pub; then sign BUNDLE "
                                      "with it if one is given."),
    force: bool = typer.Option(False, "--force", help="With --generate-key: replace existing key files."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Sign a bundle: every file's digest and its claim (domain, tolerances, runtimes, versions), checked by
    `onnxgate verify BUNDLE --trust KEY.pub` and `onnxgate serve BUNDLE --trust KEY.pub`."""
    from ..errors import BadInputError

    data: dict = {}
    if generate_key is not None:
        from ..bundle.signing import generate_key as make_key

        if key is not None:
            raise BadInputError("Give either --key (an existing private key) or --generate-key (a new one), not both.",
                                hint="Drop one of the two options.")
        private, public = make_key(generate_key, force=force)
        data["key"], data["public_key"], key = str(private), str(public), private
        if not json_out:
            console.print(f"key pair written: {escape(str(private))} (private, keep it secret) and "
                          f"{escape(str(public))} (give this one to whoever verifies)", soft_wrap=True)
    if bundle is None:
        if generate_key is None:
            raise BadInputError("`onnxgate sign` needs a BUNDLE folder and --key KEY (or --generate-key KEY).",
                                hint="Example: onnxgate sign out/bundle --key signing.key")
        return finish(json_out=json_out, data=data)
    if key is None:
        raise BadInputError(f"`onnxgate sign {bundle}` needs the private key to sign with: --key KEY.",
                            hint="Make one with `onnxgate sign --generate-key signing.key`.")
    if not bundle.is_dir():
        raise BadInputError(f"'{bundle}' is not a bundle folder; onnxgate signs folders (the signature is written "
                            "into the folder as onnxgate.sig).",
                            hint="Sign the folder written by `onnxgate bundle`, then pack it (tar) if you ship a tar.")
    from ..bundle import verify_bundle
    from ..bundle.signing import sign_bundle
    from ..outcome import raise_for

    with progress("signing the bundle") as status:
        status.update("verifying the bundle before signing it (checksums, golden outputs)")
        raise_for(verify_bundle(bundle))  # onnxgate signs only a claim that re-verifies here
        signed = sign_bundle(bundle, key)
    data.update(signed)
    if not json_out:
        console.print(f"signed {escape(str(bundle))}: {len(signed['subjects'])} files and the bundle's claim, key id "
                      f"{signed['keyid'][:16]}; signature in {escape(signed['signature'])}", soft_wrap=True)
        console.print(f"check it with: onnxgate verify {escape(str(bundle))} --trust KEY.pub", soft_wrap=True)
    finish(json_out=json_out, data=data)


def register(app: typer.Typer) -> None:
    app.command("sign")(sign)
