"""Issue 22 items 6 and 7: what a bundle claims about itself is held to sense, and the commands that take bundles
agree on them.

A manifest cannot vouch for itself without a signature, but it can be sane: the attack here raises the tolerances
to 1e30, replaces the golden outputs and recomputes every checksum (what anyone who can edit a bundle does). `verify
BUNDLE` and `serve` must refuse it with the reason; a subtler edit (tolerances at the ceiling, outputs off by 40% of
their scale) must fail as "missed by far". Also: verify prints the tolerances it used and where they came from;
onnxgate never writes a tolerance its verify would refuse; a bundle with external data serves and deploys; `deploy`
names what is wrong with a .tar.gz or a bare .onnx. Tiny models from test_bundle.py (onnx.helper), no torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import bundle_of, edit_manifest, make_model, rehash

from onnxgate.bundle import verify_bundle
from onnxgate.cli.main import main
from onnxgate.errors import BadInputError, ExitCode
from onnxgate.runtimes.venv_worker import save_npz


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    return bundle_of(model, tmp_path_factory.mktemp("bundle") / "tiny-bundle", tolerances={"logits": (1e-4, 1e-5)})


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def tamper(folder: Path, rtol: float, atol: float, outputs) -> None:
    """Set the tolerances, replace the golden outputs by ``outputs(reference)``, and recompute every checksum."""
    from onnxgate.bundle.verify import load_npz

    reference = load_npz(folder / "reference_outputs.npz")
    save_npz(folder / "reference_outputs.npz", {k: outputs(v).astype(v.dtype) for k, v in reference.items()})
    edit_manifest(folder, lambda m: m.__setitem__("tolerances", {"logits": {"rtol": rtol, "atol": atol}}))
    rehash(folder)


def envelope(argv: list[str], capsys) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_tolerances_of_1e30_with_replaced_outputs_are_refused_by_verify(copy, capsys):
    tamper(copy, 1e30, 1e30, lambda ref: np.full_like(ref, 123.0))
    code, doc = envelope(["verify", str(copy)], capsys)
    assert code == ExitCode.BAD_INPUT and doc["ok"] is False, doc
    message = doc["error"]["message"]
    assert "'logits'" in message and "rtol=1e30" in message and "beyond what its float32 precision allows" in message
    assert doc["error"]["hint"]


def test_the_same_bundle_is_refused_by_serve_before_any_port_is_bound(copy):
    tamper(copy, 1e30, 1e30, lambda ref: np.full_like(ref, 123.0))
    proc = subprocess.run([sys.executable, "-m", "onnxgate.cli.main", "serve", str(copy), "--port", "0", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert "rtol=1e30" in doc["error"]["message"] and "listening on" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_outputs_missed_by_far_fail_whatever_the_manifest_allows(copy, capsys):
    """Tolerances at the ceiling (rtol 0.25, atol a quarter of the scale) would let outputs 40% off pass."""
    from onnxgate.bundle.verify import load_npz

    scale = float(np.abs(load_npz(copy / "reference_outputs.npz")["logits"]).max())
    tamper(copy, 0.25, 0.25 * scale, lambda ref: ref * 1.4)
    code, doc = envelope(["verify", str(copy)], capsys)
    assert code == ExitCode.PARITY_FAILED, doc
    (result,) = doc["result"]["results"]
    assert "misses the reference by far" in result["reason"] and "29% of the output's scale" in result["reason"]


def test_an_honest_edit_within_the_ceiling_still_passes(copy):
    tamper(copy, 1e-3, 1e-4, lambda ref: ref)
    assert verify_bundle(copy).passed


def test_verify_prints_the_tolerances_it_used_and_where_they_came_from(bundle, capsys):
    code = main(["verify", str(bundle)])
    err = capsys.readouterr().err
    assert code == 0
    assert "tolerance of 'logits': rtol=1e-4 atol=1e-5 (from manifest.json, set when the bundle was written" in err
    assert "the float32 default is rtol=1e-3 atol=1e-4" in err and "at most rtol=2.5e-1" in err
    code, doc = envelope(["verify", str(bundle)], capsys)
    (row,) = doc["result"]["results"][0]["tolerances"]
    assert (row["output"], row["rtol"], row["atol"]) == ("logits", 1e-4, 1e-5) and "manifest.json" in row["source"]


def test_onnxgate_never_writes_a_tolerance_its_verify_refuses(model, tmp_path):
    with pytest.raises(BadInputError, match="beyond what a comparison can prove"):
        bundle_of(model, tmp_path / "b", tolerances={"logits": (1e30, 1e-5)})
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------- external data, deploy


@pytest.fixture(scope="module")
def ext_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ext")
    return bundle_of(make_model(root / "m.onnx", external_data="m.onnx.data"), root / "bundle")


def test_a_bundle_with_external_data_serves_whatever_its_manifest_says_of_the_model(ext_bundle, tmp_path):
    """The session is built from the model's path whenever the model names external data (onnxruntime refuses it for
    a model given as bytes: "escapes working directory"), not only when the manifest's description says so."""
    pytest.importorskip("fastapi")
    from onnxgate.serve.contract import load_served_model

    copy = Path(shutil.copytree(ext_bundle, tmp_path / "b"))
    edit_manifest(copy, lambda m: m["model"].__setitem__("external_data", []))
    assert verify_bundle(copy).passed
    model = load_served_model(copy)
    assert model.self_check[0]["passed"] is True


def test_a_bundle_with_external_data_deploys_to_ort_mobile(ext_bundle, tmp_path, capsys):
    copy = Path(shutil.copytree(ext_bundle, tmp_path / "b"))
    code, doc = envelope(["deploy", str(copy), "--to", "ort-mobile"], capsys)
    assert code == 0, doc["reason"]
    assert [a["verdict"] for a in doc["result"]["artifacts"]] == ["passed"]
    assert verify_bundle(copy).passed  # the artifact is checksummed into the manifest
    # its row says why its latency may trail model.onnx's on a desktop CPU (issue 27 item 7)
    assert "can run slower than model.onnx" in doc["result"]["artifacts"][0]["runtime"]


def test_deploy_names_what_is_wrong_with_an_archive_or_a_bare_onnx_file(bundle, model, tmp_path, capsys):
    from onnxgate.bundle.write import write_tarball

    archive = write_tarball(bundle, tmp_path / "tiny-bundle.tar.gz")
    code, doc = envelope(["deploy", str(archive), "--to", "ort-mobile"], capsys)
    assert code == ExitCode.BAD_INPUT and "is a bundle archive" in doc["error"]["message"]
    assert "tar -xf" in doc["error"]["hint"] and "PyTorch can load" not in doc["error"]["message"]
    code, doc = envelope(["deploy", str(model), "--to", "ort-mobile"], capsys)
    assert code == ExitCode.BAD_INPUT and "without a PyTorch reference" in doc["error"]["message"]
    assert "onnxgate bundle" in doc["error"]["hint"]
    assert not list(tmp_path.glob("**/targets"))
