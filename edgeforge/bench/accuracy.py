"""Accuracy of a runner on an evaluation set. Torch-free (Pillow only for image folders).

Datasets (`--eval`):
- an `.npz` with `x` (N, C, H, W) float32 already normalised, or uint8 images (N, H, W, C) /
  (N, C, H, W) that get resized and normalised per the recipe's input spec, and optionally
  `y` (N,) integer labels;
- an image folder `root/<class>/<image>` (classes in sorted order are labels 0..K-1).

With labels: top-1/top-5. Against a reference runner (the FP32 model): top-1 agreement and
SQNR of the logits, 10*log10(sum(ref^2) / sum((ref - out)^2)).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from edgeforge.errors import BadInput
from edgeforge.runtimes.base import Runner

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm"}


@dataclass
class EvalSet:
    name: str
    x: np.ndarray  # (N, ...) float32, normalised, model layout
    y: np.ndarray | None
    sha256: str


def load_eval_set(path: str | os.PathLike, input_spec: Mapping[str, Any], limit: int | None = None) -> EvalSet:
    """Load an evaluation set (see the module docstring); BadInput says what is accepted."""
    path = Path(path)
    shape = list(input_spec.get("shape") or [])
    if path.is_file() and path.suffix == ".npz":
        x, y = _load_npz(path, shape, input_spec)
    elif path.is_dir():
        x, y = _load_folder(path, shape, input_spec, limit)
    else:
        raise BadInput(f"--eval {path}: expected an .npz (x, optional y) or an image folder root/<class>/<image>")
    if limit is not None:
        x, y = x[:limit], (y[:limit] if y is not None else None)
    if len(x) == 0:
        raise BadInput(f"--eval {path}: no samples")
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    if y is not None:
        digest.update(np.ascontiguousarray(y).tobytes())
    return EvalSet(str(path), x, y, digest.hexdigest())


def _load_npz(path: Path, shape: list[int], input_spec: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z.files:
            raise BadInput(f"--eval {path}: the npz needs an array `x` (has {z.files})")
        x = z["x"]
        y = z["y"].astype(np.int64) if "y" in z.files else None
    if y is not None and len(y) != len(x):
        raise BadInput(f"--eval {path}: x has {len(x)} samples but y has {len(y)}")
    if x.dtype == np.uint8:
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        x = np.stack([_preprocess(img.transpose(1, 2, 0), shape, input_spec) for img in x])
    else:
        x = x.astype(np.float32)
    if shape and list(x.shape[1:]) != shape:
        raise BadInput(f"--eval {path}: samples have shape {list(x.shape[1:])}, the model takes {shape}")
    return x, y


def _load_folder(root: Path, shape: list[int], input_spec: Mapping[str, Any], limit: int | None):
    try:
        from PIL import Image
    except ImportError as e:
        raise BadInput(f"--eval {root}: image folders need Pillow (pip install 'edgeforge[data]')") from e
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise BadInput(f"--eval {root}: expected one sub-folder per class (root/<class>/<image>)")
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    if limit is not None:
        # Spread a limited evaluation over the classes instead of taking the first ones.
        step = max(len(files) // limit, 1)
        files = files[::step][:limit]
    xs, ys = [], []
    for f, label in files:
        with Image.open(f) as im:
            xs.append(_preprocess(np.asarray(im.convert("RGB")), shape, input_spec, Image))
        ys.append(label)
    return np.stack(xs) if xs else np.zeros((0, *shape), np.float32), np.asarray(ys, np.int64)


def _preprocess(hwc: np.ndarray, shape: list[int], input_spec: Mapping[str, Any], image_module: Any = None) -> np.ndarray:
    """Resize the shorter side to size/0.875, centre-crop to size, scale to [0,1], normalise."""
    if image_module is None:
        from PIL import Image as image_module
    c, h, w = shape[-3:] if shape else (hwc.shape[2], hwc.shape[0], hwc.shape[1])
    im = image_module.fromarray(hwc.squeeze(-1) if hwc.shape[-1] == 1 else hwc)
    if c == 3:
        im = im.convert("RGB")
    scale = max(h, w) / 0.875 / min(im.size)
    im = im.resize((max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))), image_module.BILINEAR)
    left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
    im = im.crop((left, top, left + w, top + h))
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = arr[..., None] if arr.ndim == 2 else arr
    arr = arr.transpose(2, 0, 1)
    mean = np.asarray(input_spec.get("mean") or [0.0] * c, np.float32).reshape(-1, 1, 1)
    std = np.asarray(input_spec.get("std") or [1.0] * c, np.float32).reshape(-1, 1, 1)
    return (arr - mean) / std


def _batches(runner: Runner, x: np.ndarray, base_feed: Mapping[str, np.ndarray], input_name: str) -> Iterator[tuple[int, dict]]:
    """Feeds over `x` at the model's batch size (the last batch padded when the batch is fixed)."""
    spec = next(s for s in runner.input_specs() if s.name == input_name)
    fixed = isinstance(spec.shape[0], int) and spec.shape[0] > 0
    bs = spec.shape[0] if fixed else 16
    for start in range(0, len(x), bs):
        chunk = x[start:start + bs]
        n = len(chunk)
        if fixed and n < bs:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, axis=0)])
        feed = dict(base_feed)
        feed[input_name] = np.ascontiguousarray(chunk, dtype=np.dtype(spec.dtype))
        yield n, feed


def logits(runner: Runner, x: np.ndarray, base_feed: Mapping[str, np.ndarray], input_name: str) -> np.ndarray:
    """The runner's first output over all of `x`, as (N, classes)."""
    out_name = runner.output_names()[0]
    chunks = []
    for n, feed in _batches(runner, x, base_feed, input_name):
        chunks.append(runner.infer(feed)[out_name][:n].reshape(n, -1))
    return np.concatenate(chunks).astype(np.float64)


def topk(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(100.0 * np.mean(np.any(top == labels[:, None], axis=1)))


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.sum((ref - out) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def evaluate(runner: Runner, evalset: EvalSet, base_feed: Mapping[str, np.ndarray], input_name: str,
             reference: Runner | None = None, reference_name: str | None = None,
             scores: np.ndarray | None = None, ref_scores: np.ndarray | None = None) -> dict:
    """Top-1/top-5 (when labelled) and agreement/SQNR against `reference` (when given).

    `scores` / `ref_scores`: the runner's / the reference's outputs over `evalset.x` when the
    caller already has them (`logits`), so nothing runs twice."""
    if scores is None:
        scores = logits(runner, evalset.x, base_feed, input_name)
    result: dict[str, Any] = {"dataset": evalset.name, "dataset_sha256": evalset.sha256,
                              "num_samples": int(len(evalset.x)), "labels": evalset.y is not None}
    if evalset.y is not None:
        if evalset.y.max() >= scores.shape[1] or evalset.y.min() < 0:
            raise BadInput(f"--eval {evalset.name}: labels span 0..{evalset.y.max()} but the model has "
                           f"{scores.shape[1]} outputs")
        result["top1"] = topk(scores, evalset.y, 1)
        result["top5"] = topk(scores, evalset.y, 5)
    if reference is not None or ref_scores is not None:
        ref = ref_scores if ref_scores is not None else logits(reference, evalset.x, base_feed, input_name)
        result["reference"] = reference_name or (reference.name if reference is not None else "reference")
        result["agreement_top1"] = float(100.0 * np.mean(ref.argmax(1) == scores.argmax(1)))
        s = sqnr_db(ref, scores)
        result["sqnr_db"] = s if math.isfinite(s) else 999.0
    return result
