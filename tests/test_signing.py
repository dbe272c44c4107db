"""Signed bundles (issue 28, item 4): `onnxgate sign BUNDLE --key KEY` writes an in-toto statement (every file's
digest + the bundle's claim) in a DSSE envelope; `verify BUNDLE --trust KEY.pub` and `serve BUNDLE --trust KEY.pub`
check it. A flipped claim field, a swapped artifact, a wrong key and an unsigned bundle each fail with exit 9 and
say which."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import bundle_of, edit_manifest, make_model, rehash

from onnxgate.cli.main import main


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    from onnxgate.bundle.signing import generate_key

    folder = tmp_path_factory.mktemp("keys")
    mine, mine_pub = generate_key(folder / "signing.key")
    other, other_pub = generate_key(folder / "other.key")
    return {"key": mine, "pub": mine_pub, "other": other, "other_pub": other_pub}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    folder = tmp_path_factory.mktemp("signed")
    bundle = bundle_of(make_model(folder / "m.onnx"), folder / "bundle")
    assert main(["sign", str(bundle), "--key", str(keys["key"])]) == 0
    return bundle


def envelope_of(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_sign_then_verify_round_trip(signed, keys, capsys):
    envelope = json.loads((signed / "onnxgate.sig").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    names = {s["name"] for s in statement["subject"]}
    assert {"manifest.json", "model.onnx", "golden_inputs.npz", "reference_outputs.npz"} <= names
    assert "onnxgate.sig" not in names
    claim = statement["predicate"]
    assert claim["tolerances"] == {"logits": {"rtol": 1e-3, "atol": 1e-4}} and claim["versions"]["onnxgate"]
    assert set(claim["data"]) == {"golden_inputs.npz", "reference_outputs.npz"}

    assert main(["verify", str(signed), "--trust", str(keys["pub"]), "--json"]) == 0
    result = envelope_of(capsys)["result"]["results"][0]
    assert result["status"] == "pass" and result["signature"].startswith("verified with")
    assert main(["verify", str(signed), "--json"]) == 0  # the signature file is outside the manifest's file list
    assert envelope_of(capsys)["result"]["results"][0]["signature"] == "signed, not checked"


def test_a_signed_tar_verifies(signed, keys, tmp_path, capsys):
    tar = tmp_path / "bundle.tar.gz"
    with tarfile.open(tar, "w:gz") as archive:
        archive.add(signed, arcname="bundle")
    assert main(["verify", str(tar), "--trust", str(keys["pub"]), "--json"]) == 0


def test_a_flipped_claim_field_fails_naming_it(signed, keys, tmp_path, capsys):
    copy = shutil.copytree(signed, tmp_path / "copy")
    edit_manifest(copy, lambda m: m["tolerances"]["logits"].update(rtol=0.2))  # a looser claim, still self-consistent
    assert main(["verify", str(copy), "--json"]) == 0  # unsigned checks cannot tell
    capsys.readouterr()
    assert main(["verify", str(copy), "--trust", str(keys["pub"]), "--json"]) == 9
    reason = envelope_of(capsys)["reason"]
    assert "claim: 'tolerances.logits.rtol' is 0.2 in the manifest, signed as 0.001" in reason, reason
    assert "manifest.json differs from the signed file" in reason


def test_a_swapped_artifact_fails_naming_it(signed, keys, tmp_path, capsys):
    copy = shutil.copytree(signed, tmp_path / "copy")
    make_model(copy / "model.onnx", opset=18)  # same numbers, other bytes: the manifest rehashed by the attacker
    rehash(copy)
    edit_manifest(copy, lambda m: m["files"].pop("onnxgate.sig"))  # no manifest lists the signature
    assert main(["verify", str(copy), "--json"]) == 0
    capsys.readouterr()
    assert main(["verify", str(copy), "--trust", str(keys["pub"]), "--json"]) == 9
    reason = envelope_of(capsys)["reason"]
    assert "digest: model.onnx differs from the signed file" in reason, reason


def test_a_wrong_key_fails_saying_so(signed, keys, capsys):
    assert main(["verify", str(signed), "--trust", str(keys["other_pub"]), "--json"]) == 9
    reason = envelope_of(capsys)["reason"]
    assert "signed by another key" in reason and str(keys["other_pub"]) in reason, reason


def test_an_altered_statement_fails_the_signature(signed, keys, tmp_path, capsys):
    copy = shutil.copytree(signed, tmp_path / "copy")
    envelope = json.loads((copy / "onnxgate.sig").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["tolerances"]["logits"]["rtol"] = 0.2  # re-written claim, old signature
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (copy / "onnxgate.sig").write_text(json.dumps(envelope))
    assert main(["verify", str(copy), "--trust", str(keys["pub"]), "--json"]) == 9
    assert "does not verify under the trusted key" in envelope_of(capsys)["reason"]


def test_an_unsigned_bundle_is_refused_under_trust(signed, keys, tmp_path, capsys):
    copy = shutil.copytree(signed, tmp_path / "copy")
    (copy / "onnxgate.sig").unlink()
    assert main(["verify", str(copy), "--json"]) == 0
    assert envelope_of(capsys)["result"]["results"][0]["signature"] == "unsigned"
    assert main(["verify", str(copy), "--trust", str(keys["pub"]), "--json"]) == 9
    assert "unsigned" in envelope_of(capsys)["reason"]


def test_serve_with_trust_refuses_an_unsigned_bundle_before_binding(signed, keys, tmp_path, capsys):
    pytest.importorskip("fastapi")
    copy = shutil.copytree(signed, tmp_path / "copy")
    (copy / "onnxgate.sig").unlink()
    assert main(["serve", str(copy), "--port", "0", "--trust", str(keys["pub"]), "--json"]) == 9
    envelope = envelope_of(capsys)
    assert envelope["exit_code"] == 9 and "unsigned" in envelope["reason"]
    assert main(["serve", str(copy), "--export-config", "triton", str(tmp_path / "repo"), "--trust", str(keys["pub"]),
                 "--json"]) == 9
    assert not (tmp_path / "repo").exists()
    from onnxgate.serve.server import prove

    assert prove(signed, str(keys["pub"])).signature.startswith("verified with")  # a signed one passes


def test_signing_refuses_a_tampered_bundle_and_bad_keys(signed, keys, tmp_path, capsys):
    copy = shutil.copytree(signed, tmp_path / "copy")
    (copy / "golden_inputs.npz").write_bytes(b"junk")
    assert main(["sign", str(copy), "--key", str(keys["key"]), "--json"]) == 9
    assert main(["sign", str(signed), "--key", str(keys["pub"]), "--json"]) == 2  # a public key cannot sign
    capsys.readouterr()
    assert main(["verify", str(signed), "--trust", str(tmp_path / "nope.pub"), "--json"]) == 2
    assert "does not exist" in envelope_of(capsys)["reason"]
    assert main(["sign", "--generate-key", str(keys["key"]), "--json"]) == 2  # never overwrites a key


def test_generate_and_sign_in_one_command(tmp_path, capsys):
    bundle = bundle_of(make_model(tmp_path / "m.onnx"), tmp_path / "bundle")
    assert main(["sign", str(bundle), "--generate-key", str(tmp_path / "k.key"), "--json"]) == 0
    data = envelope_of(capsys)["result"]
    assert data["public_key"].endswith("k.key.pub") and (tmp_path / "k.key").stat().st_mode & 0o077 == 0
    assert main(["verify", str(bundle), "--trust", data["public_key"], "--json"]) == 0


def test_signature_checks_import_neither_torch_nor_onnx(signed, keys):
    code = ("import sys; from onnxgate.bundle import verify_bundle; "
            f"r = verify_bundle({str(signed)!r}, trust={str(keys['pub'])!r}); assert r.passed, r.reason; "
            "bad = [m for m in ('torch', 'onnx') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_garbage_signature_file_is_exit_9_not_a_crash(signed, keys, tmp_path, capsys):
    copy = shutil.copytree(signed, tmp_path / "copy")
    for junk in (b"[" * 100_000, b"not json", b'{"payloadType": "application/vnd.in-toto+json", "payload": "!!"}'):
        (copy / "onnxgate.sig").write_bytes(junk)
        assert main(["verify", str(copy), "--trust", str(keys["pub"]), "--json"]) == 9
        assert "not a readable DSSE envelope" in envelope_of(capsys)["reason"]
