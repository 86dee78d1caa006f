"""`export run.name=NAME [out=DIR]`: every fold of a finished run as an ONNX model, with the
preprocessing it expects written beside it, and each file checked against torch.

Why ONNX: a trained fold should run where this toolkit does not (a server, a phone, onnxruntime in a
Kaggle kernel without timm). The file alone is not enough to use it: `preprocessing.json` says how
images become its input (resize, scale, mean/std, layout) and how its outputs combine (the folds'
ensemble; the video task's calibration). Each exported file is run once by onnxruntime on random
input and compared with torch; the difference is recorded, and a file that disagrees is an error.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from common.core.errors import ConfigError, DataError
from common.core.files import atomic_path, write_json_atomic
from common.core.paths import run_dir
from common.data.augment import IMAGENET_MEAN, IMAGENET_STD
from common.data.images import PAD_COLOUR
from common.models.input_config import normalization
from common.engine.folds import run_folds
from common.tasks.engine import predict_config, task_class

TOLERANCE = 1e-3  # max |onnxruntime - torch| on normalised embeddings / logits; float32 kernels differ ~1e-6

ENSEMBLE = {
    "embeddings": "concatenate the folds' embeddings and divide by sqrt(number of folds): the cosine of two "
                  "such vectors is the mean of the folds' cosines",
    "logits": "mean of the folds' logits over the crops of a video (and their mirror images), then the "
              "run's aggregation and calibration (postprocessing)",
}


def onnx_modules():
    """onnx and onnxruntime, or a clear message naming what to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"export needs the onnx and onnxruntime packages ({exc.name} is missing): "
                          ".venv/bin/pip install onnx onnxruntime onnxscript") from None
    return onnx, onnxruntime


def export_fold(network: torch.nn.Module, size: tuple[int, int], path: Path, output: str) -> float:
    """Write `network` as ONNX (batch size free) and return max |onnxruntime - torch| on a random batch."""
    _, onnxruntime = onnx_modules()
    example = torch.randn(2, 3, *size)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes about its own internals
        program = torch.onnx.export(network, (example,), input_names=["images"], output_names=[output],
                                    dynamic_shapes={"images": {0: batch}}, dynamo=True, verbose=False)
        program.save(str(tmp), external_data=False)  # one self-contained file
        check = torch.randn(3, *example.shape[1:], generator=torch.Generator().manual_seed(0))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": check.numpy()})[0]
        with torch.no_grad():
            want = network(check).numpy()
        difference = float(np.abs(got - want).max())
        if got.shape != want.shape or not difference <= TOLERANCE:
            raise DataError(f"{path}: onnxruntime and torch disagree (shape {got.shape} vs {want.shape}, "
                            f"max difference {difference:.2e} > {TOLERANCE})")
    return difference


def export_command(comp, cfg) -> Path:
    cls = task_class(comp)
    run = run_dir(cfg, comp.name, create=False)
    saved = predict_config(cls, cfg, run)
    onnx_modules()  # a missing package is said before any model is built
    fold_dirs = [run / f"fold{f}" for f in run_folds(saved)]
    missing = [str(d / name) for d in fold_dirs for name in cls.fold_files if not (d / name).exists()]
    if missing:
        raise DataError(f"run '{run.name}': no trained model in {', '.join(missing)}")
    out = Path(saved.out) if saved.get("out") else run / "export"
    size = cls.input_size(saved)
    models = []
    for fold_dir in fold_dirs:
        path = out / f"{fold_dir.name}.onnx"
        difference = export_fold(cls.fold_network(saved, fold_dir), size, path, cls.export_output)
        models.append({"file": path.name, "max_abs_difference_vs_torch": difference})
        print(f"{path}: onnxruntime matches torch within {difference:.1e}", flush=True)
    mean, std = normalization(saved) if cls.name != "video" else (IMAGENET_MEAN, IMAGENET_STD)
    if saved.data.get("resize", "stretch") == "pad" and cls.name != "video":
        resize = (f"keep the aspect ratio, fit inside {size[0]}x{size[1]} with cv2.INTER_AREA, centre it and pad "
                  f"the rest with RGB {list(PAD_COLOUR)}")
    else:
        resize = f"the whole image (a face crop for video) to {size[0]}x{size[1]} with cv2.INTER_AREA, stretched, no padding"
    if saved.data.get("boxes") and cls.name != "video":
        resize = (f"first crop to the image's box (data.boxes, grown by {saved.data.box_margin} of its size on every "
                  "side), then " + resize)
    spec = {
        "competition": comp.name, "run": run.name, "task": cls.name,
        "input": {"name": "images", "layout": "NCHW", "dtype": "float32", "channels": "RGB",
                  "height": size[0], "width": size[1], "batch": "any",
                  "resize": resize, "scale": 1 / 255, "mean": list(mean), "std": list(std),
                  "formula": "(pixel / 255 - mean) / std, per channel"},
        "output": {"name": cls.export_output, "tta": "mirror the image, average (embeddings: then L2-normalise)"
                   if saved.infer.tta_flip else "none"},
        "ensemble": ENSEMBLE.get(cls.export_output, "mean over folds"),
        "models": models,
    }
    calibration = run / "calibration.json"
    if calibration.exists():
        spec["postprocessing"] = json.loads(calibration.read_text())
    postprocess = run / "postprocess.json"
    if postprocess.exists():  # identification: what the run applies after the embeddings (not in the ONNX files)
        chosen = json.loads(postprocess.read_text())
        spec["retrieval_postprocessing"] = {"steps": chosen["steps"], "verification_fusion": chosen["fusion"],
                                            "verification": saved.infer.verify}
    write_json_atomic(out / "preprocessing.json", spec)
    print(f"{len(models)} ONNX model(s) and preprocessing.json in {out}", flush=True)
    return out
