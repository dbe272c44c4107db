"""Image preprocessing as an executable spec, with two implementations that are proven to agree.

The spec is what a bundle records (metadata key ``preprocess``, e.g.
``resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225``) and means exactly torchvision's
``Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean, std)`` on a PIL image decoded with Pillow
and converted to RGB (``L`` for a one-channel model):

- resize: the shorter side becomes ``resize`` (default ``crop``), the longer ``int(resize * long / short)``
  (truncated, torchvision's ``_compute_resized_output_size``); an image already that size is not resampled;
- interpolation: Pillow's ``bilinear`` (default), ``bicubic`` or ``nearest``; Pillow always antialiases
  bilinear and bicubic when it shrinks (torchvision's ``antialias=True``);
- crop: ``crop`` x ``crop`` at offsets ``int(round((side - crop) / 2.0))`` (Python's round: half to even); an
  image smaller than the crop is padded with zeros as torchvision pads;
- 0..1 (``/ 255`` in float32), channels reordered when ``order=BGR``, then ``(x - mean) / std`` per channel in
  the model's channel order; NCHW.

``Preprocess.array`` is the numpy/Pillow implementation (the server's and verification's; no torch).
``Preprocess.torchvision`` builds torchvision's transforms for the same spec (only where torch is installed), and
``prove`` runs both on real photos: the largest difference of the preprocessed tensors and the top-1/top-5
agreement of bytes -> label through the ONNX model in onnxruntime against torchvision + the PyTorch module.
``in_graph`` writes the other artifact, the spec as ONNX ops before the model (uint8 H x W x 3 in); it is not the
default because ONNX's Resize is not Pillow's (within one 8-bit step where it resamples, exact where it does not),
while the server's implementation equals torchvision's bit for bit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError

MAX_IMAGE_SIDE = 16384
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# The bound the proof holds the two implementations to, in normalized units (after mean/std). Both resample with
# the same Pillow call, so the tensors differ only by float32 rounding of (x / 255 - mean) / std.
PIXEL_BOUND = 1e-6
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: resize the shorter side to ``resize`` (default: ``crop``), centre-crop ``crop`` x
    ``crop``, scale to 0..1, normalize with ``mean``/``std`` per channel, NCHW float32 (see the module's doc for
    the exact rounding, which is torchvision's).

    Written as text (CLI flag, metadata key ``preprocess``)::

        resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,order=RGB[,interpolation=bicubic]
    """

    crop: int
    resize: int | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    order: str = "RGB"
    interpolation: str = field(default="bilinear")

    @classmethod
    def parse(cls, text: str) -> "Preprocess":
        hint = "Write it as resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,order=RGB."
        fields: dict[str, Any] = {}
        try:
            for item in filter(None, (t.strip() for t in text.split(","))):
                key, value = (s.strip() for s in item.split("=", 1))
                if key in ("crop", "resize"):
                    fields[key] = int(value)
                elif key in ("mean", "std"):
                    fields[key] = tuple(float(v) for v in value.split("/"))
                elif key == "order":
                    fields[key] = value.upper()
                elif key == "interpolation":
                    fields[key] = value.lower()
                else:
                    raise BadInputError(f"Preprocessing '{text}': unknown key '{key}'.", hint=hint)
        except ValueError:
            raise BadInputError(f"Preprocessing '{text[:200]}' does not parse.", hint=hint) from None
        if "crop" not in fields:
            raise BadInputError(f"Preprocessing '{text[:200]}' names no crop size.", hint=hint)
        pre = cls(**fields)
        if pre.order not in ("RGB", "BGR") or len(pre.mean) != 3 or len(pre.std) != 3 or 0 in pre.std \
                or not all(math.isfinite(v) for v in (*pre.mean, *pre.std)):
            raise BadInputError(f"Preprocessing '{text[:200]}': order must be RGB or BGR, mean and std three finite "
                                "numbers each (std non-zero).", hint=hint)
        if not all(1 <= v <= MAX_IMAGE_SIDE for v in (pre.crop, pre.resize or pre.crop)):
            raise BadInputError(f"Preprocessing '{text[:200]}': crop and resize must lie in 1..{MAX_IMAGE_SIDE}.",
                                hint=hint)
        if pre.interpolation not in INTERPOLATIONS:
            raise BadInputError(f"Preprocessing '{text[:200]}': interpolation must be one of "
                                f"{', '.join(INTERPOLATIONS)}.", hint=hint)
        return pre

    @classmethod
    def from_meta(cls, meta: Mapping[str, str], *, model: str | Path | None = None) -> "Preprocess | None":
        """From model metadata: the ``preprocess`` key, else separate ``crop``/``resize``/``mean``/``std``/``order``
        keys in the same syntax. None when the metadata says nothing about preprocessing. A malformed entry is a
        BadInputError naming it (the user can pass --preprocess instead)."""
        from .metadata import entry, malformed

        hint = "Pass --preprocess resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225 to override it."
        keys = ["preprocess"] if "preprocess" in meta else [k for k in ("crop", "resize", "mean", "std", "order")
                                                             if k in meta]
        if not keys or (keys != ["preprocess"] and "crop" not in keys):
            return None
        where = model or "the model"
        values = {k: entry(meta, k, model=where, limit=4096, hint=hint) for k in keys}
        text = values["preprocess"] if keys == ["preprocess"] else ",".join(f"{k}={values[k]}" for k in keys)
        try:
            return cls.parse(text)  # type: ignore[arg-type]
        except BadInputError as exc:
            raise malformed(where, "/".join(keys), exc.message.rstrip("."), hint=hint) from None

    def __str__(self) -> str:
        text = f"resize={self.resize}," if self.resize else ""
        text += (f"crop={self.crop},mean={'/'.join(map(str, self.mean))},"
                 f"std={'/'.join(map(str, self.std))},order={self.order}")
        return text + (f",interpolation={self.interpolation}" if self.interpolation != "bilinear" else "")

    def describe(self) -> dict[str, Any]:
        """Every decision the spec fixes, spelled out (for reports)."""
        return {"spec": str(self), "decode": "Pillow, converted to RGB (L for one channel)",
                "resize": f"shorter side to {self.resize or self.crop}, longer int({self.resize or self.crop} * "
                          "long / short) (truncated, torchvision's rule); not resampled when already that size",
                "interpolation": f"Pillow {self.interpolation}" + (", antialiased" if self.interpolation != "nearest"
                                                                   else ""),
                "crop": f"centre {self.crop}x{self.crop} at int(round((side - {self.crop}) / 2)), zero-padded if "
                        "smaller", "scale": "x / 255 (float32)", "order": self.order,
                "mean": list(self.mean), "std": list(self.std), "layout": "NCHW"}

    # ---------------------------------------------------------------------------------- numpy/Pillow implementation

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize: torchvision's ``_compute_resized_output_size`` for one int size."""
        size = self.resize or self.crop
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        return (size, new_long) if width <= height else (new_long, size)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre crop, as torchvision's ``center_crop`` places it (an image
        smaller than the crop is padded with zeros: negative offsets, which Pillow fills with zeros)."""
        def offset(side: int) -> int:
            if self.crop > side:
                return -((self.crop - side) // 2)
            return int(round((side - self.crop) / 2.0))

        left, top = offset(width), offset(height)
        return left, top, left + self.crop, top + self.crop

    def resize_and_crop(self, img):
        """A PIL image resized and centre-cropped (Pillow; no torch)."""
        from PIL import Image

        size = self.output_size(*img.size)
        if size != img.size:
            img = img.resize(size, getattr(Image.Resampling, self.interpolation.upper()))
        return img.crop(self.crop_box(*img.size))

    def array(self, img, channels: int = 3) -> np.ndarray:
        """A decoded PIL image (any mode) as the C x crop x crop float32 array the model takes."""
        img = img.convert("L" if channels == 1 else "RGB")
        pixels = np.asarray(self.resize_and_crop(img), dtype=np.float32) / np.float32(255.0)
        chw = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        if channels == 3 and self.order == "BGR":
            chw = chw[::-1]
        mean = np.asarray(self.mean[:channels], dtype=np.float32).reshape(channels, 1, 1)
        std = np.asarray(self.std[:channels], dtype=np.float32).reshape(channels, 1, 1)
        return np.ascontiguousarray((chw - mean) / std, dtype=np.float32)

    def load_folder(self, path: str | Path, *, input_name: str, batch: int = 4, limit: int | None = None) -> list:
        """Images of a folder (sorted by name, sub-folders included) as NCHW float32 feeds of up to ``batch``."""
        from PIL import Image

        images = []
        for f in image_files(path, limit):
            try:
                with Image.open(f) as im:
                    images.append(self.array(im, 3))
            except OSError as exc:
                raise BadInputError(f"Image '{f}' cannot be read: {exc}.", hint="Remove or replace it.") from None
        return [{input_name: np.ascontiguousarray(np.stack(images[i:i + batch]), dtype=np.float32)}
                for i in range(0, len(images), batch)]

    # ---------------------------------------------------------------------------------- torchvision implementation

    def torchvision(self, channels: int = 3) -> Callable:
        """torchvision's transforms for this spec: a callable from a decoded PIL image (converted to RGB, as
        torchvision's ImageFolder loads it) to a C x crop x crop float tensor. Needs torch and torchvision."""
        import torch
        from torchvision import transforms as T

        steps: list = [T.Grayscale(1)] if channels == 1 else []
        mode = getattr(T.InterpolationMode, self.interpolation.upper())
        steps += [T.Resize(self.resize or self.crop, interpolation=mode, antialias=True), T.CenterCrop(self.crop),
                  T.ToTensor()]
        if channels == 3 and self.order == "BGR":
            steps.append(T.Lambda(lambda x: torch.flip(x, dims=[0])))
        steps.append(T.Normalize(list(self.mean[:channels]), list(self.std[:channels])))
        compose = T.Compose(steps)
        return lambda img: compose(img.convert("RGB"))


def image_files(path: str | Path, limit: int | None = None) -> list[Path]:
    """The image files of a folder (sorted by name, sub-folders included)."""
    root = Path(path)
    if not root.is_dir():
        raise BadInputError(f"Image folder '{path}' does not exist.", hint="Give a folder of .jpg/.png images.")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise BadInputError(f"Image folder '{path}' holds no images ({', '.join(IMAGE_SUFFIXES)}).",
                            hint="Put some images in it or point to another folder.")
    return files


# -------------------------------------------------------------------------------------------------- the proof


@dataclass
class PreprocessProof:
    """Server (numpy/Pillow + onnxruntime) against torchvision + PyTorch eager, from the same image bytes."""

    spec: str
    images: int
    max_pixel_error: float  # largest |server tensor - torchvision tensor|, normalized units
    pixel_bound: float
    top1_agree: int
    top5_agree: int  # the two top-5 sets are equal
    top1_differs: list[dict] = field(default_factory=list)  # image, server's and PyTorch's top-1 (and scores)
    max_top1_disagreements: int = 0
    top5: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # image -> {"server": [...], "pytorch": [...]}
    reference_spec: str | None = None  # torchvision's side ran this spec instead (None: the same as ``spec``)

    @property
    def passed(self) -> bool:
        return self.max_pixel_error <= self.pixel_bound and \
            self.images - self.top1_agree <= self.max_top1_disagreements

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "reference_spec": self.reference_spec or self.spec, "images": self.images,
                "max_pixel_error": self.max_pixel_error, "pixel_bound": self.pixel_bound,
                "top1_agreement": self.top1_agree / max(self.images, 1),
                "top5_agreement": self.top5_agree / max(self.images, 1),
                "top1_agree": self.top1_agree, "top5_agree": self.top5_agree,
                "max_top1_disagreements": self.max_top1_disagreements, "top1_differs": self.top1_differs,
                "passed": self.passed}


def prove(pre: Preprocess, model_path: str | Path, module, images: Iterable[tuple[str, bytes]], *,
          channels: int = 3, batch: int = 8, max_top1_disagreements: int | None = None,
          pixel_bound: float = PIXEL_BOUND, reference: Preprocess | None = None) -> PreprocessProof:
    """Run every (name, image file bytes) through both paths: the server's (``serve.images.to_array``, the ONNX
    model in onnxruntime) and torchvision's transforms + ``module`` in PyTorch eager; compare the preprocessed
    tensors and the labels. ``max_top1_disagreements`` defaults to 0.4% of the images (2 of 500).

    ``reference``: the spec torchvision's side runs when it is not ``pre`` (``onnxgate run --preprocess`` says what
    the model expects while the model records what the server will run): the proof then shows whether serving the
    recorded spec gives the model's answer. Both must crop the same size (the model takes one input size)."""
    import torch
    from PIL import Image

    from .runtimes.ort import open_session
    from .serve.images import to_array
    from .serve.protocol import RequestError

    session = open_session(str(model_path))
    input_name = session.get_inputs()[0].name
    theirs_pre = reference or pre
    if theirs_pre.crop != pre.crop:
        raise BadInputError(f"Preprocessing proof: the server's spec ({pre}) crops {pre.crop}x{pre.crop}, the "
                            f"reference's ({theirs_pre}) {theirs_pre.crop}x{theirs_pre.crop}: the server would feed "
                            "the model another size than it expects.",
                            hint="Record the preprocessing the model was trained with (--meta preprocess=...).")
    reference_fn = theirs_pre.torchvision(channels)
    module.eval()
    items = list(images)
    worst, top1, top5, differs, proof_top5 = 0.0, 0, 0, [], {}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        try:
            served = np.stack([to_array(data, name, pre, channels, "float32") for name, data in chunk])
        except RequestError as exc:  # what the server would answer with a 4xx
            raise BadInputError(f"Preprocessing proof: {exc.message}", hint="Remove or replace that image.") from None
        theirs = torch.stack([reference_fn(Image.open(io.BytesIO(data))) for _name, data in chunk])
        worst = max(worst, float(np.abs(served - theirs.numpy()).max()))
        (ours,) = session.run(None, {input_name: served})[:1]
        with torch.inference_mode():
            eager = module(theirs)
            eager = (eager[0] if isinstance(eager, (tuple, list)) else eager).float().numpy()
        for (name, _data), a, b in zip(chunk, ours, eager):
            a5, b5 = np.argsort(-a, kind="stable")[:5], np.argsort(-b, kind="stable")[:5]
            top1 += int(a5[0] == b5[0])
            top5 += int(set(a5.tolist()) == set(b5.tolist()))
            proof_top5[name] = {"server": a5.tolist(), "pytorch": b5.tolist()}
            if a5[0] != b5[0]:
                differs.append({"image": name, "server": int(a5[0]), "pytorch": int(b5[0])})
    allowed = int(len(items) * 0.004) if max_top1_disagreements is None else max_top1_disagreements
    return PreprocessProof(str(pre), len(items), worst, pixel_bound, top1, top5, differs, allowed, proof_top5,
                           str(theirs_pre) if theirs_pre != pre else None)


# ------------------------------------------------------------------------------------ preprocessing in the graph

IN_GRAPH_OPSET = 18  # Resize's antialias and axes


def in_graph_bound(pre: Preprocess) -> float:
    """The bound the in-graph artifact's tensor is held to against torchvision's: one 8-bit step after
    normalization (ONNX resamples in float and rounds once; Pillow rounds after each of its two passes)."""
    return 1.0 / (255.0 * min(pre.std)) + 1e-5


def in_graph(pre: Preprocess, model_path: str | Path, out_path: str | Path, *, channels: int = 3) -> Path:
    """An ONNX file that takes one decoded photo (``image``: uint8 H x W x 3, RGB, any size) and runs the spec as
    ONNX ops (Resize with antialias, Slice, normalize, NCHW) before the model; it also outputs the preprocessed
    tensor (``preprocessed``) so it can be held to torchvision's. Decoding stays outside (no ONNX op decodes JPEG).

    Not the default: ONNX's antialiased linear Resize is not Pillow's (Pillow rounds to uint8 between its two
    passes), so the tensor differs from torchvision's by up to a few 1/255 steps where the image is resampled;
    ``prove_in_graph`` measures by how much and whether labels move."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper, version_converter

    if channels != 3:
        raise BadInputError("Preprocessing in the graph is built for RGB models only.", hint="Use the server's.")
    from . import serde

    model = serde.load(model_path)
    if not any(o.domain in ("", "ai.onnx") and o.version == IN_GRAPH_OPSET for o in model.opset_import):
        model = version_converter.convert_version(model, IN_GRAPH_OPSET)
    size, crop = pre.resize or pre.crop, pre.crop
    mode = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}[pre.interpolation]
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    consts = {"pp_size": np.array([size], np.int64), "pp_crop": np.array([crop], np.int64),
              "pp_two": np.array([2.0], np.float32), "pp_255": np.array([255.0], np.float32),
              "pp_zero": np.array([0.0], np.float32), "pp_idx01": np.array([0, 1], np.int64),
              "pp_mean": mean.reshape(1, 1, 3), "pp_std": std.reshape(1, 1, 3)}
    n = helper.make_node
    nodes = [
        n("Shape", ["image"], ["pp_shape"], start=0, end=2),            # [H, W]
        n("Split", ["pp_shape"], ["pp_h", "pp_w"], axis=0, num_outputs=2),
        n("Min", ["pp_h", "pp_w"], ["pp_short"]), n("Max", ["pp_h", "pp_w"], ["pp_long"]),
        n("Mul", ["pp_long", "pp_size"], ["pp_long_x"]),
        n("Div", ["pp_long_x", "pp_short"], ["pp_new_long"]),             # int64: truncates, int(size * long / short)
        n("LessOrEqual", ["pp_w", "pp_h"], ["pp_portrait"]),
        n("Where", ["pp_portrait", "pp_new_long", "pp_size"], ["pp_new_h"]),
        n("Where", ["pp_portrait", "pp_size", "pp_new_long"], ["pp_new_w"]),
        n("Concat", ["pp_new_h", "pp_new_w"], ["pp_sizes"], axis=0),
        n("Cast", ["image"], ["pp_float_rgb"], to=TensorProto.FLOAT),
        n("Gather", ["pp_float_rgb", "pp_order"], ["pp_float"], axis=2),  # the model's channel order
        n("Resize", ["pp_float", "", "", "pp_sizes"], ["pp_resized_raw"], mode=mode, antialias=1, axes=[0, 1],
          coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.5),
        n("Round", ["pp_resized_raw"], ["pp_rounded"]),                   # Pillow's output is uint8
        n("Clip", ["pp_rounded", "pp_zero", "pp_255"], ["pp_resized"]),
        n("Sub", ["pp_sizes", "pp_crop"], ["pp_margin"]),
        n("Cast", ["pp_margin"], ["pp_margin_f"], to=TensorProto.FLOAT),
        n("Div", ["pp_margin_f", "pp_two"], ["pp_half"]),
        n("Round", ["pp_half"], ["pp_offset_f"]),                         # half to even, as Python's round
        n("Cast", ["pp_offset_f"], ["pp_starts"], to=TensorProto.INT64),
        n("Add", ["pp_starts", "pp_crop"], ["pp_ends"]),
        n("Slice", ["pp_resized", "pp_starts", "pp_ends", "pp_idx01"], ["pp_cropped"]),
        n("Div", ["pp_cropped", "pp_255"], ["pp_unit"]),
        n("Sub", ["pp_unit", "pp_mean"], ["pp_centred"]),
        n("Div", ["pp_centred", "pp_std"], ["pp_hwc"]),
        n("Transpose", ["pp_hwc"], ["pp_chw"], perm=[2, 0, 1]),
    ]
    consts["pp_order"] = np.array([0, 1, 2] if pre.order == "RGB" else [2, 1, 0], np.int64)
    chw = "pp_chw"
    graph = model.graph
    model_input = graph.input[0].name
    nodes += [n("Unsqueeze", [chw, "pp_axis0"], [model_input])]
    consts["pp_axis0"] = np.array([0], np.int64)
    prefix = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    new_nodes = nodes + list(graph.node)
    outputs = list(graph.output) + [helper.make_tensor_value_info(model_input, TensorProto.FLOAT,
                                                                  [1, 3, crop, crop])]
    new_graph = helper.make_graph(new_nodes, graph.name + "_with_preprocessing",
                                  [helper.make_tensor_value_info("image", TensorProto.UINT8, ["H", "W", 3])],
                                  outputs, prefix + list(graph.initializer))
    out = helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    kept = {p.key: p.value for p in model.metadata_props if p.key == "labels"}  # the input specs no longer hold
    helper.set_model_props(out, {**kept, "onnxgate.preprocess_in_graph": str(pre)})
    onnx.checker.check_model(out)
    return serde.save(out, out_path, force=True)
