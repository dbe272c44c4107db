"""Issue 4 acceptance: portable bundles, tamper evidence, runtime matrix, torch-free re-verification.

The test models are built with onnx.helper (no torch): Conv+Relu+GlobalAveragePool+Flatten+Gemm with random
weights. Reference outputs come from this process's onnxruntime. Tests marked slow create virtual
environments from the package registry (about a minute and a half in all); they are shared per module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import bundle_of, golden_and_reference, make_model

from onnxgate.bundle import verify_bundle, verify_matrix, write_bundle
from onnxgate.cli.main import main
from onnxgate.errors import BadInputError, OutputExistsError, UnsafeInputError

REPO = Path(__file__).resolve().parents[1]
BUNDLE_FILES = {"model.onnx", "golden_inputs.npz", "reference_outputs.npz", "requirements.txt",
                "requirements-runtime.txt", "environment.yml", "manifest.json"}


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    """One bundle for the read-only tests; tests that change it work on a copy."""
    return bundle_of(model, tmp_path_factory.mktemp("bundle") / "tiny-bundle", tarball=True,
                     tolerances={"logits": (1e-4, 1e-5)}, export_info={"strategy": "dynamo", "opset": 17},
                     verification={"passed": True, "max_abs_err": 1e-6}, source_ref="tests:tiny_cnn")


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


# ------------------------------------------------------------------------------------------------ writing


def test_bundle_holds_model_data_locks_and_a_manifest_with_checksums(bundle):
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "onnxgate-bundle" and manifest["format_version"] == 1
    assert set(manifest["files"]) == BUNDLE_FILES - {"manifest.json"}
    assert manifest["inputs"] == [{"name": "input", "shape": ["N", 3, 16, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": ["N", 5], "dtype": "float32"}]
    assert manifest["tolerances"] == {"logits": {"rtol": 1e-4, "atol": 1e-5}}
    assert manifest["model"]["opset"] == 17 and manifest["model"]["ir_version"] == 8
    assert manifest["export"] == {"strategy": "dynamo", "opset": 17}
    assert manifest["verification"] == {"passed": True, "max_abs_err": 1e-6}
    assert manifest["source_ref"] == "tests:tiny_cnn" and manifest["created_at"]
    versions = manifest["environment"]["versions"]
    assert versions["onnxruntime"] == version("onnxruntime") and versions["numpy"] == np.__version__
    assert versions["torch"] == _installed("torch")  # read from metadata, never imported
    assert manifest["environment"]["cpu"]["model"]
    with np.load(bundle / "reference_outputs.npz") as data:
        assert data["logits"].shape == (2, 5)


def test_tarball_holds_the_folder_and_verifies(bundle):
    tar_path = bundle.with_name(bundle.name + ".tar.gz")
    with tarfile.open(tar_path) as tar:
        assert {Path(n).name for n in tar.getnames()} >= BUNDLE_FILES
        assert all(n == bundle.name or n.startswith(bundle.name + "/") for n in tar.getnames())
    assert verify_bundle(tar_path).passed


def test_external_data_files_travel_with_the_model(tmp_path):
    model = make_model(tmp_path / "big.onnx", external_data="big.onnx.data")
    out = bundle_of(model, tmp_path / "b")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["external_data"] == ["big.onnx.data"]
    assert "big.onnx.data" in manifest["files"]
    assert verify_bundle(out).passed
    flip_byte(out / "big.onnx.data")
    result = verify_bundle(out)
    assert result.status == "tampered" and "big.onnx.data" in result.reason


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin"])
def test_external_data_leaving_the_model_folder_is_refused(tmp_path, location):
    folder = tmp_path / "models"
    folder.mkdir()
    model_path = make_model(folder / "m.onnx", external_data="m.onnx.data")
    (tmp_path / "outside.bin").write_bytes((folder / "m.onnx.data").read_bytes())
    inputs, reference = golden_and_reference(model_path)  # onnxruntime itself refuses the edited model
    proto = onnx.load(str(model_path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(proto, str(model_path))
    with pytest.raises(UnsafeInputError, match="outside its folder"):
        write_bundle(tmp_path / "b", model_path=model_path, golden_inputs=inputs, reference_outputs=reference)
    assert not (tmp_path / "b").exists()


def test_refuses_to_overwrite_without_force_and_replaces_with_it(model, tmp_path):
    out = bundle_of(model, tmp_path / "b")
    (out / "stale.txt").write_text("from an older bundle")
    with pytest.raises(OutputExistsError, match="already exists"):
        bundle_of(model, out)
    assert (out / "stale.txt").exists()
    bundle_of(model, out, force=True)
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary folders left behind


def test_arrays_must_match_the_model_and_tolerances_its_outputs(model, tmp_path):
    inputs, reference = golden_and_reference(model)
    with pytest.raises(BadInputError, match="missing input"):
        write_bundle(tmp_path / "b", model_path=model, golden_inputs={"x": inputs["input"]},
                     reference_outputs=reference)
    with pytest.raises(BadInputError, match="dtype float64, the model says float32"):
        write_bundle(tmp_path / "b", model_path=model, golden_inputs={"input": inputs["input"].astype(np.float64)},
                     reference_outputs=reference)
    with pytest.raises(BadInputError, match="does not output"):
        write_bundle(tmp_path / "b", model_path=model, golden_inputs=inputs, reference_outputs=reference,
                     tolerances={"probs": (1e-3, 1e-4)})
    assert not (tmp_path / "b").exists()


# -------------------------------------------------------------------------------------------- verification


def test_verify_passes_in_process_with_per_output_errors(bundle):
    result = verify_bundle(bundle)
    assert result.passed and result.status == "pass" and result.runtime_version == ort.__version__
    assert result.files_checked == sorted(BUNDLE_FILES - {"manifest.json"})
    (comparison,) = result.outputs
    assert comparison.name == "logits" and comparison.passed and comparison.max_abs_err <= 1e-5
    assert (comparison.tolerance.rtol, comparison.tolerance.atol) == (1e-4, 1e-5)
    assert result.to_dict()["passed"] is True


@pytest.mark.parametrize("name", ["model.onnx", "reference_outputs.npz", "golden_inputs.npz", "requirements.txt"])
def test_a_changed_byte_in_any_file_fails_and_names_it(bundle_copy, name):
    flip_byte(bundle_copy / name)
    result = verify_bundle(bundle_copy)
    assert not result.passed and result.status == "tampered"
    assert f"{name}: content changed" in result.reason
    assert result.outputs == []  # a tampered bundle is never run


def test_missing_and_unlisted_files_fail(bundle_copy):
    (bundle_copy / "golden_inputs.npz").unlink()
    (bundle_copy / "model.onnx.data").write_bytes(b"weights slipped in later")
    result = verify_bundle(bundle_copy)
    assert result.status == "tampered"
    assert "golden_inputs.npz: missing" in result.reason
    assert "model.onnx.data: not listed in the manifest" in result.reason


def test_wrong_reference_numbers_fail_with_the_error_size(model, tmp_path):
    inputs, reference = golden_and_reference(model)
    out = write_bundle(tmp_path / "b", model_path=model, golden_inputs=inputs,
                       reference_outputs={"logits": reference["logits"] + 0.5})
    result = verify_bundle(out)
    assert result.status == "fail" and "logits" in result.reason
    assert result.outputs[0].max_abs_err == pytest.approx(0.5, rel=1e-3)


def test_verify_bundle_cli_exit_codes(bundle_copy, capsys):
    assert main(["verify-bundle", str(bundle_copy)]) == 0
    flip_byte(bundle_copy / "model.onnx")
    assert main(["verify-bundle", str(bundle_copy)]) == 9
    assert "model.onnx" in capsys.readouterr().err
    assert main(["verify-bundle", str(bundle_copy), "--json"]) == 9
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["result"]["results"][0]["status"] == "tampered"
    assert report["error"]["type"] == "IntegrityError" and report["error"]["exit_code"] == 9
    assert main(["verify-bundle", str(bundle_copy), "--runtime", "onnxruntime>=1.17"]) == 2


def test_bundle_cli_packs_an_onnx_file_and_self_verifies(model, tmp_path, capsys):
    inputs, reference = golden_and_reference(model)
    np.savez(tmp_path / "in.npz", **inputs)
    np.savez(tmp_path / "ref.npz", **reference)
    out = tmp_path / "b"
    args = ["bundle", str(model), "-o", str(out), "--golden", str(tmp_path / "in.npz"),
            "--reference", str(tmp_path / "ref.npz"), "--atol", "1e-3", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["result"]["written"] == str(out) and report["result"]["results"][0]["status"] == "pass"
    assert json.loads((out / "manifest.json").read_text())["tolerances"]["logits"] == {"rtol": 1e-3, "atol": 1e-3}
    assert main(args) == 2  # exists, no --force
    assert main(["bundle", str(model), "-o", str(tmp_path / "c")]) == 2  # no golden data
    assert "--golden" in capsys.readouterr().err


def test_verifying_imports_no_torch(bundle):
    code = ("import sys; from onnxgate.bundle import verify_bundle; r = verify_bundle(sys.argv[1]); "
            "assert r.passed, r; assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------- other machines: venvs from the registry


@pytest.fixture(scope="module")
def runtime_venv(bundle, tmp_path_factory) -> Path:
    """A clean venv built from the bundle's requirements-runtime.txt: onnxgate's base install, no torch.

    onnxgate is not on the package index, so it goes in first with --no-deps from a copy of this checkout
    (a copy, so the build writes nothing into the working tree); `pip install -r` then finds its pin
    satisfied and installs every other pin from the registry.
    """
    root = tmp_path_factory.mktemp("runtime-env")
    source = root / "onnxgate-src"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip(python, "--no-deps", str(source))
    pip(python, "-r", str(bundle / "requirements-runtime.txt"))
    return venv


@pytest.mark.slow
def test_bundle_verifies_in_a_fresh_torch_free_venv(runtime_venv, bundle):
    python = runtime_venv / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    proc = subprocess.run([str(runtime_venv / "bin" / "onnxgate"), "verify-bundle", str(bundle), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["result"]["results"][0]["passed"]


@pytest.mark.slow
def test_runtime_lock_file_recreates_the_environment_exactly(runtime_venv, bundle):
    pins = [line for line in (bundle / "requirements-runtime.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert not any(line.lower().startswith(("torch", "nvidia")) for line in pins)
    code = ("import json, importlib.metadata as md; "
            "print(json.dumps({d.metadata['Name']: d.version for d in md.distributions()}))")
    listing = subprocess.run([str(runtime_venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                             check=True).stdout
    installed = {_norm(name): found for name, found in json.loads(listing).items()}
    for pin in pins:
        name, pinned = pin.split("==")
        assert installed.get(_norm(name)) == pinned, pin


@pytest.mark.slow
def test_runtime_matrix_reports_incompatible_unavailable_and_pass(tmp_path, monkeypatch, capsys):
    """opset 21 / IR 10 is newer than onnxruntime 1.16.3 knows (opset 19, IR 9): incompatible, not a crash;
    the installed release passes; a release that does not exist is unavailable."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = bundle_of(make_model(tmp_path / "m21.onnx", opset=21, ir_version=10), tmp_path / "b21")
    newest = f"onnxruntime=={ort.__version__}"
    old, current, missing = verify_matrix(out, ["onnxruntime==1.16.3", newest, "onnxruntime==0.0.1"])
    assert old.status == "incompatible" and old.runtime_version == "1.16.3"
    assert "Unsupported model IR version: 10" in old.reason
    assert current.passed and current.runtime_version == ort.__version__ and current.outputs[0].passed
    assert missing.status == "unavailable" and "onnxruntime==0.0.1" in missing.reason
    assert (tmp_path / "cache" / "onnxgate" / "venvs" / "onnxruntime-1.16.3" / ".onnxgate-venv.json").is_file()
    # At IR 9 the old runtime gets past the IR check and refuses the opset instead (cached venv: seconds).
    out_ir9 = bundle_of(make_model(tmp_path / "m21ir9.onnx", opset=21, ir_version=9), tmp_path / "b21ir9")
    (old_ir9,) = verify_matrix(out_ir9, ["onnxruntime==1.16.3"])
    assert old_ir9.status == "incompatible" and "Opset 21 is under development" in old_ir9.reason
    # The CLI table over the now cached venvs; exit 6 because one runtime cannot load the model.
    assert main(["verify-bundle", str(out), "--runtime", "onnxruntime==1.16.3", "--runtime", newest]) == 6
    err = capsys.readouterr().err
    assert "incompatible" in err and "pass" in err


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except Exception:
        return None


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.mark.slow
def test_a_torch_cnn_bundled_from_its_ref_verifies_without_torch(runtime_venv, tmp_path):
    """The issue's scenario end to end: `onnxgate bundle REF` exports a real PyTorch CNN, verifies it against
    PyTorch and writes the bundle; the clean venv (no torch) then re-verifies it with `onnxgate verify DIR`."""
    from onnxgate.pipeline import bundle_from_ref
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    config = ExportConfig(inputs=(parse_input("x:Bx1x8x8:float32"),), dims=(parse_dim("B=1..64@4"),))
    out = bundle_from_ref("onnxgate.examples.digits:trained_digits_cnn", tmp_path / "cnn-bundle", config=config)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source_ref"] == "onnxgate.examples.digits:trained_digits_cnn"
    proc = subprocess.run([str(runtime_venv / "bin" / "onnxgate"), "verify", str(out), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"]["results"][0]["passed"]
