"""Signed bundles: an in-toto statement over every file of a bundle and its claim, in a DSSE envelope.

``onnxgate sign BUNDLE --key KEY`` writes ``onnxgate.sig`` into the bundle folder (the one file the manifest does
not list, like ``manifest.json`` itself): a DSSE envelope (https://github.com/secure-systems-lab/dsse) whose
payload is an in-toto Statement v1 —

* ``subject``: every file of the bundle, ``manifest.json`` included, by name and sha256;
* ``predicateType``: ``PREDICATE_TYPE``; ``predicate``: the bundle's claim, read from its manifest (see
  ``claim_of``): the verified domain, the tolerances, the claim codec's ``claim`` section, the inputs and outputs, the verification record (noise
  profile, runtimes), the tool versions (exporter, onnxruntime, onnxgate), the digests of the golden data;

signed with an ECDSA P-256 key (SHA-256; Ed25519 keys work too). ``onnxgate verify BUNDLE --trust KEY.pub``
checks, in this order: the envelope's signature under that key, the signed claim against the manifest's (naming
the first field that differs), every signed digest against the bundle (naming the file); then the usual
re-verification. Each failure is a tampered bundle (exit 9) that says which.

Why not OpenSSF ``model-signing``: its statement's predicate type is fixed (its verifier refuses any other), so
the claim could ride only as a covered file, and it pulls in ``sigstore`` (TUF, requests, ...) where verifying a
bundle must run on a production box with onnxgate's base install. The envelope here is the same standard format
(DSSE + in-toto v1), made with ``cryptography`` alone, with no network.

This module imports neither torch nor onnx; ``cryptography`` is imported when a key is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from .. import claim as cl
from ..errors import BadInputError, IntegrityError
from ..fsutil import atomic_write_text
from . import manifest as mf

SIGNATURE = mf.SIGNATURE  # "onnxgate.sig", in the bundle folder, outside the manifest's file list
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://onnxgate.dev/bundle-claim/v1"
MAX_SIGNATURE_BYTES = 16 << 20
# The manifest fields that make up the claim (what the bundle says it proves, and with what); created_at and the
# machine's CPU flags are provenance, not claims, and stay out so that re-signing a bundle gives the same payload.
# The claim codec's fields (``claim.MANIFEST_FIELDS``: tolerances, domain, and the ``claim`` section of bundles that
# have one) are signed too.
CLAIM_FIELDS = ("source_ref", "model", "inputs", "outputs", "verification", "export", "targets")
_KEY_HINT = ("Make a key pair with `onnxgate sign --generate-key KEY` (or `openssl genpkey -algorithm EC -pkeyopt "
             "ec_paramgen_curve:P-256 -out KEY && openssl pkey -in KEY -pubout -out KEY.pub`).")


# ------------------------------------------------------------------------------------------------ the claim


def claim_of(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The bundle's claim as its (validated) manifest states it: the signed predicate."""
    claim = {key: manifest.get(key) for key in CLAIM_FIELDS}
    for key in cl.MANIFEST_FIELDS:  # a bundle written before the claim section signs without it, as it was signed
        if key in manifest or key != cl.MANIFEST_CLAIM:
            claim[key] = manifest.get(key)
    environment = manifest.get("environment")
    # the exporter (torch, onnxscript), onnx, onnxruntime, onnxgate and python versions the bundle was made with
    claim["versions"] = environment.get("versions") if isinstance(environment, dict) else None
    claim["data"] = {name: manifest["files"][name]["sha256"] for name in (mf.GOLDEN_INPUTS, mf.REFERENCE_OUTPUTS)}
    return json.loads(json.dumps(claim, default=str))  # the form it takes in the payload, for comparison


def statement_of(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The in-toto statement for the bundle in ``folder``: every file's digest (from the manifest, which the caller
    has checked against the disk, plus the manifest's own), and the claim."""
    subjects = [{"name": rel, "digest": {"sha256": entry["sha256"]}}
                for rel, entry in sorted(manifest["files"].items())]
    subjects.append({"name": mf.MANIFEST, "digest": {"sha256": mf.sha256_file(folder / mf.MANIFEST)}})
    return {"_type": STATEMENT_TYPE, "subject": sorted(subjects, key=lambda s: s["name"]),
            "predicateType": PREDICATE_TYPE, "predicate": claim_of(folder, manifest)}


# ------------------------------------------------------------------------------------------------ keys


def _crypto():
    try:
        import cryptography  # noqa: F401  (a base dependency; absent only in a hand-made environment)
    except ImportError:
        from ..errors import MissingExtraError

        error = MissingExtraError("cryptography", "sign", "Signing or checking a bundle's signature")
        error.hint = "Install it with: pip install cryptography (onnxgate's base install includes it)"
        raise error from None
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    return hashes, serialization, ec, ed25519


def generate_key(path: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new ECDSA P-256 private key to ``path`` (PKCS#8 PEM, mode 0600) and its public key to ``path.pub``."""
    _, serialization, ec, _ = _crypto()
    public_path = Path(f"{path}.pub")
    for target in (path, public_path):
        if target.exists() and not force:
            raise BadInputError(f"'{target}' already exists; onnxgate does not overwrite a key.",
                                hint="Pass another path, or --force to replace it.")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return path, public_path


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        info = path.stat()
    except OSError:
        raise BadInputError(f"The {what} '{path}' does not exist.", hint=_KEY_HINT) from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 20:
        raise BadInputError(f"The {what} '{path}' is not a key file (not a regular file of at most 1 MiB).",
                            hint=_KEY_HINT)
    return path.read_bytes()


def load_private_key(path: Path):
    _, serialization, ec, ed25519 = _crypto()
    data = _read_key_file(path, "signing key")
    password = os.environ.get("ONNXGATE_SIGN_PASSWORD")
    try:
        key = serialization.load_pem_private_key(data, password=password.encode() if password else None)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"The signing key '{path}' is not a readable PEM private key ({str(exc)[:200]}).",
                            hint="Pass the private key (not the .pub); an encrypted key takes its password from "
                                 "$ONNXGATE_SIGN_PASSWORD. " + _KEY_HINT) from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise BadInputError(f"The signing key '{path}' is a {type(key).__name__}; onnxgate signs with ECDSA or "
                            "Ed25519 keys.", hint=_KEY_HINT)
    return key


def load_public_key(path: Path):
    _, serialization, ec, ed25519 = _crypto()
    data = _read_key_file(path, "trusted public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"The trusted key '{path}' is not a readable PEM public key ({str(exc)[:200]}).",
                            hint="Pass the .pub file written next to the signing key. " + _KEY_HINT) from None
    if not isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise BadInputError(f"The trusted key '{path}' is a {type(key).__name__}; onnxgate checks ECDSA or "
                            "Ed25519 signatures.", hint=_KEY_HINT)
    return key


def key_id(public_key) -> str:
    """sha256 of the public key's DER SubjectPublicKeyInfo: the envelope's ``keyid``."""
    _, serialization, _, _ = _crypto()
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is really signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _sign_bytes(key, data: bytes) -> bytes:
    hashes, _, ec, _ = _crypto()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data)


def _signature_holds(key, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    hashes, _, ec, _ = _crypto()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


# ------------------------------------------------------------------------------------------------ signing


def sign_bundle(folder: Path, key_path: Path) -> dict[str, Any]:
    """Sign the bundle folder with the private key at ``key_path``: writes ``folder/onnxgate.sig``.

    The bundle must be intact (every file matches the manifest; exit 9 otherwise): onnxgate signs only what it
    has checked. Returns what was signed: key id, subjects, predicate type.
    """
    key = load_private_key(key_path)  # a bad key fails before the bundle is read
    manifest = mf.read_manifest(folder)
    problems = mf.check_files(folder, manifest)
    if problems:
        raise IntegrityError(f"The bundle '{folder}' changed since it was written, so onnxgate will not sign it: "
                             + "; ".join(problems[:10]) + ".", hint="Re-create the bundle, then sign it.")
    statement = statement_of(folder, manifest)
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    keyid = key_id(key.public_key())
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": keyid,
                                "sig": base64.b64encode(_sign_bytes(key, pae(PAYLOAD_TYPE, payload))).decode()}]}
    atomic_write_text(folder / SIGNATURE, json.dumps(envelope, indent=2) + "\n", force=True)
    return {"bundle": str(folder), "signature": str(folder / SIGNATURE), "keyid": keyid,
            "predicate_type": PREDICATE_TYPE, "subjects": [s["name"] for s in statement["subject"]]}


# ------------------------------------------------------------------------------------------------ checking


def signature_state(folder: Path) -> str:
    """'signed, not checked' when the bundle holds a signature file, else 'unsigned' (nothing is read)."""
    try:
        info = (folder / SIGNATURE).lstat()
    except OSError:
        return "unsigned"
    return "signed, not checked" if stat.S_ISREG(info.st_mode) else "unsigned"


def check_signature(folder: Path, manifest: dict[str, Any], trusted_key: Path) -> list[str]:
    """Problems with the bundle's signature under ``trusted_key``, most telling first; empty when it holds.

    The caller has checked every file against the manifest; this checks that the manifest and those files are the
    ones the key's owner signed. Key files that cannot be read raise BadInputError (exit 2).
    """
    key = load_public_key(trusted_key)
    expected_id = key_id(key)
    envelope, problem = _read_envelope(folder)
    if problem:
        return [problem]
    payload = base64.b64decode(envelope["payload"], validate=True)
    sigs = envelope["signatures"]
    if not any(_signature_holds(key, base64.b64decode(s["sig"]), pae(envelope["payloadType"], payload))
               for s in sigs):
        ids = sorted({str(s.get("keyid") or "?")[:16] for s in sigs})
        if expected_id[:16] not in ids:
            return [f"signature: {SIGNATURE} was signed by another key (key id {', '.join(ids)}), not by the trusted "
                    f"key '{trusted_key}' (key id {expected_id[:16]})"]
        return [f"signature: {SIGNATURE} does not verify under the trusted key '{trusted_key}' (key id "
                f"{expected_id[:16]}): the signed statement or its signature was altered"]
    try:
        statement = json.loads(payload)
    except ValueError:
        return [f"signature: the signed payload of {SIGNATURE} is not JSON"]
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE \
            or statement.get("predicateType") != PREDICATE_TYPE or not isinstance(statement.get("subject"), list):
        return [f"signature: the signed payload of {SIGNATURE} is not an onnxgate bundle statement "
                f"(predicateType {str(statement.get('predicateType') if isinstance(statement, dict) else None)[:80]})"]
    problems = [f"claim: {line}" for line in _claim_differences(statement.get("predicate"), claim_of(folder, manifest))]
    current = {s["name"]: s["digest"]["sha256"] for s in statement_of(folder, manifest)["subject"]}
    signed = {}
    for subject in statement["subject"]:
        if isinstance(subject, dict) and isinstance(subject.get("digest"), dict):
            signed[str(subject.get("name"))] = subject["digest"].get("sha256")
    for name in sorted(set(signed) | set(current)):
        if name not in current:
            problems.append(f"digest: {name} was signed but is missing from the bundle")
        elif name not in signed:
            problems.append(f"digest: {name} is in the bundle but was not signed")
        elif signed[name] != current[name]:
            problems.append(f"digest: {name} differs from the signed file (sha256 {current[name][:16]}..., signed "
                            f"{str(signed[name])[:16]}...)")
    return problems


def _read_envelope(folder: Path) -> tuple[dict[str, Any], str | None]:
    path = folder / SIGNATURE
    try:
        info = path.lstat()
    except OSError:
        return {}, f"signature: the bundle is unsigned (no {SIGNATURE}), and a trusted key was required"
    if not stat.S_ISREG(info.st_mode):
        return {}, f"signature: {SIGNATURE} is not a regular file"
    if info.st_size > MAX_SIGNATURE_BYTES:
        return {}, f"signature: {SIGNATURE} is {info.st_size:,} bytes, more than any signature needs"
    try:
        envelope = json.loads(path.read_bytes())
        if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE:
            raise ValueError("not an in-toto DSSE envelope")
        sigs = envelope.get("signatures")
        if not isinstance(envelope.get("payload"), str) or not isinstance(sigs, list) or not sigs \
                or not all(isinstance(s, dict) and isinstance(s.get("sig"), str) for s in sigs):
            raise ValueError("no payload or no signatures")
        base64.b64decode(envelope["payload"], validate=True)
        for s in sigs:
            base64.b64decode(s["sig"], validate=True)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return {}, f"signature: {SIGNATURE} is not a readable DSSE envelope ({str(exc)[:120] or 'nested too deeply'})"
    return envelope, None


def _claim_differences(signed: Any, current: Any, path: str = "") -> list[str]:
    """Each claim field whose value differs between the signed claim and the manifest's, by dotted path."""
    if isinstance(signed, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(signed) | set(current), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in current:
                out.append(f"'{where}' was signed but is gone from the manifest")
            elif key not in signed:
                out.append(f"'{where}' is in the manifest but was not signed")
            else:
                out += _claim_differences(signed[key], current[key], where)
        return out
    if isinstance(signed, list) and isinstance(current, list) and len(signed) == len(current):
        return [d for i, (a, b) in enumerate(zip(signed, current)) for d in _claim_differences(a, b, f"{path}[{i}]")]
    if signed != current or type(signed) is not type(current):
        return [f"'{path or 'predicate'}' is {_short(current)} in the manifest, signed as {_short(signed)}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
