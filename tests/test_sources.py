"""Model sources: every reference kind load_model accepts, and the errors for the ways each goes wrong."""

from __future__ import annotations

import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from onnxgate.errors import BadInputError, ModelSourceError, UnsafeInputError
from onnxgate.sources import LoadedModel, load_model, parse_ref


class TinyNet(nn.Module):
    """At module level so that torch.save(TinyNet()) pickles a class the loader can import again."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class MarkerPayload:
    """Unpickling this creates ``path``: proof, if the file appears, that the loader ran code from a pickle."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


MODEL_FILE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, image, scale=None):
        return self.fc(image)


class NeedsArgs(nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()


class Pair(nn.Module):
    def forward(self, image, mask):
        return image * mask


class Varargs(nn.Module):
    def forward(self, *tensors):
        return sum(tensors)


def make_with_tensor():
    return Net(), torch.randn(2, 4)


def make_with_tuple():
    return Pair(), (torch.randn(2, 4), torch.ones(2, 4))


def make_with_dict():
    return Pair(), {"mask": torch.ones(2, 4), "image": torch.randn(2, 4)}


def make_varargs():
    return Varargs(), [torch.randn(2), torch.randn(2)]


def make_bad_inputs():
    return Net(), (torch.randn(2, 4), [1, 2])


def make_with_args(size):
    return Net()


def make_broken():
    return nn.Linear(4, 3, bias="nope" + 1)


def not_a_model():
    return 42
"""


@pytest.fixture()
def model_py(tmp_path: Path) -> Path:
    path = tmp_path / "model.py"
    path.write_text(MODEL_FILE)
    return path


# --- reference syntax ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "kind", "location", "name"),
    [
        ("torchvision:resnet18", "torchvision", "resnet18", ""),
        ("timm:vit_tiny_patch16_224", "timm", "vit_tiny_patch16_224", ""),
        ("hf:/models/bert:v2", "hf", "/models/bert:v2", ""),
        ("models/net.py:Net", "python_file", "models/net.py", "Net"),
        ("C:\\models\\net.py:Net", "python_file", "C:\\models\\net.py", "Net"),
        ("mypkg.models:build", "python_module", "mypkg.models", "build"),
    ],
)
def test_parse_ref_tells_reference_kinds_apart(ref, kind, location, name):
    parsed = parse_ref(ref)
    assert (parsed.kind, parsed.location, parsed.name) == (kind, location, name)


def test_ref_without_colon_explains_accepted_forms():
    with pytest.raises(BadInputError) as info:
        load_model("resnet18")
    assert "resnet18" in info.value.message and "torchvision:NAME" in info.value.hint


def test_missing_model_file_is_one_paragraph_no_such_file_error(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(ModelSourceError) as info:
        load_model(str(missing))
    assert "no such file" in info.value.message and str(missing) in info.value.message
    assert "\n" not in str(info.value)


def test_python_file_without_name_asks_for_one(model_py):
    with pytest.raises(BadInputError, match="names a Python file but not the model"):
        load_model(str(model_py))


def test_non_module_location_is_rejected():
    with pytest.raises(BadInputError, match="neither a .py file nor a dotted module name"):
        load_model("weights/model.pt:Net")


# --- file.py:Name and package.module:Name -------------------------------------------------------------------


def test_class_in_python_file_is_built_and_keeps_its_mode(model_py):
    loaded = load_model(f"{model_py}:Net")
    assert isinstance(loaded, LoadedModel)
    assert type(loaded.module).__name__ == "Net"
    assert loaded.module.training  # the exporter, not the loader, decides about eval mode
    assert loaded.example_inputs is None and loaded.kind == "module" and loaded.meta == {"source": "python"}


@pytest.mark.parametrize(
    ("factory", "names"),
    [
        ("make_with_tensor", ["image"]),  # named after forward(self, image, scale=None)
        ("make_with_tuple", ["image", "mask"]),
        ("make_with_dict", ["mask", "image"]),  # dict order is kept
        ("make_varargs", ["input_0", "input_1"]),  # *args has no names
    ],
)
def test_factory_example_inputs_are_named(model_py, factory, names):
    loaded = load_model(f"{model_py}:{factory}")
    assert list(loaded.example_inputs) == names
    assert all(isinstance(t, torch.Tensor) for t in loaded.example_inputs.values())


def test_missing_python_file_names_the_file(tmp_path):
    with pytest.raises(ModelSourceError) as info:
        load_model(f"{tmp_path / 'nope.py'}:Net")
    assert "nope.py" in info.value.message and "no such file" in info.value.message


def test_unknown_name_lists_what_the_file_defines(model_py):
    with pytest.raises(ModelSourceError) as info:
        load_model(f"{model_py}:Nett")
    assert "Did you mean Net?" in info.value.message
    assert "make_with_tensor" in info.value.hint and "torch" not in info.value.hint.split(":")[1].split(", ")


def test_class_needing_constructor_arguments_suggests_a_factory(model_py):
    with pytest.raises(ModelSourceError) as info:
        load_model(f"{model_py}:NeedsArgs")
    assert "constructor needs arguments (width)" in info.value.message
    assert "def make_model(): return NeedsArgs(width=...)" in info.value.hint


def test_factory_needing_arguments_is_reported(model_py):
    with pytest.raises(ModelSourceError, match=r"needs arguments \(size\)"):
        load_model(f"{model_py}:make_with_args")


def test_factory_errors_name_the_line_in_the_user_file(model_py):
    with pytest.raises(ModelSourceError) as info:
        load_model(f"{model_py}:make_broken")
    assert "TypeError" in info.value.message and f"{model_py}:" in info.value.message


def test_factory_returning_something_else_is_reported(model_py):
    with pytest.raises(ModelSourceError, match="returned a int, not a model"):
        load_model(f"{model_py}:not_a_model")


def test_non_tensor_example_input_is_reported(model_py):
    with pytest.raises(ModelSourceError, match="'scale' .* is a list, not a tensor"):
        load_model(f"{model_py}:make_bad_inputs")


def test_python_file_that_fails_to_run_is_reported(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nsys.exit('usage: train.py DATA')\n")
    with pytest.raises(ModelSourceError, match=r"sys.exit\('usage") as info:
        load_model(f"{script}:Net")
    assert "__main__" in info.value.hint


def test_package_module_ref_is_imported_from_the_current_directory(tmp_path, monkeypatch):
    package = tmp_path / "onnxgate_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODEL_FILE)
    monkeypatch.chdir(tmp_path)
    loaded = load_model("onnxgate_test_pkg.models:make_with_tuple")
    assert list(loaded.example_inputs) == ["image", "mask"]
    with pytest.raises(ModelSourceError, match="cannot be found"):
        load_model("onnxgate_test_pkg.nothing_here:Net")


# --- model files --------------------------------------------------------------------------------------------


def test_torchscript_file(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.randn(2, 4)), str(path))
    loaded = load_model(str(path), trust_pickle=True)  # TorchScript is code: it needs consent (issue 22)
    assert loaded.kind == "torchscript" and loaded.meta["source"] == "torchscript"
    assert loaded.module(torch.randn(1, 4)).shape == (1, 3)


def test_exported_program_archive_keeps_its_example_inputs(tmp_path):
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(TinyNet(), (torch.randn(2, 4),)), str(path))
    loaded = load_model(str(path))
    assert loaded.kind == "exported_program"
    assert list(loaded.example_inputs) == ["x"] and loaded.example_inputs["x"].shape == (2, 4)


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd, "epoch": 3}, lambda sd: {"model": sd}])
def test_state_dict_file_with_arch(tmp_path, model_py, wrap):
    source = load_model(f"{model_py}:Net").module
    path = tmp_path / "weights.pth"
    torch.save(wrap(source.state_dict()), path)
    loaded = load_model(str(path), arch=f"{model_py}:Net")
    assert torch.equal(loaded.module.fc.weight, source.fc.weight)
    assert loaded.meta["weights"] == "weights.pth" and loaded.meta["arch"] == f"{model_py}:Net"


def test_data_parallel_prefix_is_dropped(tmp_path, model_py):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in TinyNet().state_dict().items()}, path)
    assert load_model(str(path), arch=f"{model_py}:Net").module.fc.weight.shape == (3, 4)


def test_state_dict_without_arch_asks_for_it(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(TinyNet().state_dict(), path)
    with pytest.raises(ModelSourceError) as info:
        load_model(str(path))
    assert "state dict" in info.value.message and "--arch" in info.value.hint


def test_mismatched_state_dict_lists_the_keys(tmp_path, model_py):
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(5, 4), "head.bias": torch.zeros(3)}, path)
    with pytest.raises(ModelSourceError) as info:
        load_model(str(path), arch=f"{model_py}:Net")
    message = info.value.message
    assert "missing keys (fc.bias)" in message and "unexpected keys (head.bias)" in message
    assert "fc.weight (5, 4) in the file vs (3, 4) in the model" in message


def test_safetensors_state_dict(tmp_path, model_py):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(TinyNet().state_dict(), str(path))
    assert load_model(str(path), arch=f"{model_py}:Net").meta["weights"] == "model.safetensors"


def test_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"payload": MarkerPayload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeInputError) as info:
        load_model(str(path))
    assert not marker.exists()
    assert "runs code" in info.value.message and "--trust-pickle" in info.value.hint
    assert "state dict" in info.value.hint


def test_pickled_module_loads_only_with_trust_pickle(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(TinyNet().train(), path)
    with pytest.raises(UnsafeInputError, match="TinyNet"):
        load_model(str(path))
    loaded = load_model(str(path), trust_pickle=True)
    assert isinstance(loaded.module, TinyNet) and loaded.module.training
    assert loaded.meta["source"] == "pickle"


def test_plain_pickle_is_refused_too(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(TinyNet(), protocol=5))
    with pytest.raises(UnsafeInputError):
        load_model(str(path))


def test_trusted_pickle_whose_class_cannot_be_imported(tmp_path, monkeypatch):
    vanished = types.ModuleType("onnxgate_vanished_models")

    class Gone(nn.Module):
        pass

    Gone.__module__, Gone.__qualname__, vanished.Gone = vanished.__name__, "Gone", Gone
    monkeypatch.setitem(sys.modules, vanished.__name__, vanished)
    path = tmp_path / "gone.pt"
    torch.save(Gone(), path)
    monkeypatch.delitem(sys.modules, vanished.__name__)
    with pytest.raises(ModelSourceError, match="classes cannot be imported here"):
        load_model(str(path), trust_pickle=True)


def test_garbage_file_is_not_loadable(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a model")
    with pytest.raises(ModelSourceError, match="not a file PyTorch can load"):
        load_model(str(path))


def test_folder_with_config_json_points_to_hf_prefix(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError) as info:
        load_model(str(tmp_path))
    assert f"hf:{tmp_path}" in info.value.hint


def test_flag_combinations_that_make_no_sense(tmp_path, model_py):
    with pytest.raises(BadInputError, match="not a state-dict file"):
        load_model(f"{model_py}:Net", arch="torchvision:resnet18")
    with pytest.raises(BadInputError, match="Both --weights and --arch"):
        load_model(f"{model_py}:Net", weights="w.pt", arch="torchvision:resnet18")
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(TinyNet(), (torch.randn(2, 4),)), str(path))
    with pytest.raises(BadInputError, match="--weights does not apply"):
        load_model(str(path), weights=str(path))


def test_import_without_torch():
    code = "import sys, onnxgate.sources; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- torchvision and timm -----------------------------------------------------------------------------------


def test_torchvision_classification(tmp_path):
    loaded = load_model("torchvision:resnet18")
    assert loaded.meta == {"source": "torchvision", "task": "classification"}
    assert not loaded.module.training
    assert list(loaded.example_inputs) == ["x"] and loaded.example_inputs["x"].shape == (2, 3, 224, 224)


def test_torchvision_weights_file(tmp_path):
    reference = load_model("torchvision:mobilenet_v3_small").module
    path = tmp_path / "mnv3.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_model("torchvision:mobilenet_v3_small", weights=str(path))
    assert torch.equal(loaded.module.classifier[-1].weight, reference.classifier[-1].weight)
    with pytest.raises(ModelSourceError, match="do not fit the architecture ResNet"):
        load_model("torchvision:resnet18", weights=str(path))


def test_torchvision_unknown_name_lists_close_matches():
    with pytest.raises(ModelSourceError) as info:
        load_model("torchvision:resnet181")
    assert "resnet18" in info.value.message and "list_models" in info.value.hint


def test_torchvision_googlenet_without_aux_heads():
    loaded = load_model("torchvision:googlenet")
    assert loaded.module.aux1 is None and loaded.module.aux2 is None


def test_torchvision_detection_takes_a_tensor_and_returns_first_image_detections():
    loaded = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn")
    assert loaded.meta["task"] == "detection"
    assert loaded.example_inputs["x"].shape == (1, 3, 320, 320)
    with torch.no_grad():
        out = loaded.module(**loaded.example_inputs)
    assert list(out) == ["boxes", "scores", "labels"] and out["boxes"].shape[1] == 4


def test_torchvision_segmentation_returns_the_output_dict():
    loaded = load_model("torchvision:lraspp_mobilenet_v3_large")
    assert loaded.meta["task"] == "segmentation"
    with torch.no_grad():
        out = loaded.module(**loaded.example_inputs)
    assert out["out"].shape == (2, 21, 224, 224)


def test_torchvision_video_is_rejected_with_a_factory_hint():
    with pytest.raises(ModelSourceError, match="video model") as info:
        load_model("torchvision:r3d_18")
    assert "factory" in info.value.hint


def test_timm_model():
    loaded = load_model("timm:resnet18")
    assert loaded.meta == {"source": "timm", "task": "classification"} and not loaded.module.training
    assert loaded.example_inputs["x"].shape == (2, 3, 224, 224)


def test_timm_unknown_name_lists_close_matches():
    with pytest.raises(ModelSourceError) as info:
        load_model("timm:resnett18")
    assert "resnet18" in info.value.message


# --- Hugging Face ---------------------------------------------------------------------------------------------


def _save_tiny(tmp_path: Path, model) -> Path:
    folder = tmp_path / type(model).__name__
    model.save_pretrained(folder)
    return folder


def test_hf_encoder(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    loaded = load_model(f"hf:{_save_tiny(tmp_path, BertModel(config))}")
    assert loaded.meta == {"source": "huggingface", "architecture": "BertModel", "model_type": "bert"}
    assert list(loaded.example_inputs) == ["input_ids", "attention_mask"]
    ids = loaded.example_inputs["input_ids"]
    assert ids.shape == (2, 16) and ids.dtype == torch.int64 and int(ids.max()) < 100


def test_hf_decoder_returns_plain_tensors(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    loaded = load_model(f"hf:{_save_tiny(tmp_path, GPT2LMHeadModel(config))}")
    with torch.no_grad():
        out = loaded.module(**loaded.example_inputs)
    assert list(out.keys()) == ["logits"]  # use_cache=False: no past_key_values


def test_hf_encoder_decoder_gets_decoder_inputs(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=2)
    loaded = load_model(f"hf:{_save_tiny(tmp_path, T5ForConditionalGeneration(config))}")
    assert list(loaded.example_inputs) == ["input_ids", "attention_mask", "decoder_input_ids"]
    with torch.no_grad():
        out = loaded.module(**loaded.example_inputs)
    assert all(isinstance(value, torch.Tensor) for value in out.values())


def test_hf_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_model(f"hf:{tmp_path / 'absent'}")
    with pytest.raises(ModelSourceError, match="has no config.json"):
        load_model(f"hf:{tmp_path}")
