"""INT8 against FP32 on real photographs: random crops of the photos bundled with scikit-image
and scikit-learn (edgeforge.data.bundled). Torch-free (timm only to name ImageNet classes).

The photos carry no labels, so a quantized model is judged by how often it gives the answer its
FP32 model gives, on crops neither model was calibrated on:
- classifiers: top-1 agreement (same top-1 class) and top-5 agreement (the FP32 top-1 is among
  the INT8 model's five best);
- embedding backbones (DINOv2): mean and min cosine of each crop's embedding, and
  nearest-neighbour agreement: for each crop, its nearest other crop by cosine is the same crop
  in FP32 and in INT8 space (what a retrieval or k-NN user of the embedding sees).

Models run one crop at a time (the exported models have batch 1) through a Runner, so the same
code measures ONNX Runtime with its integer kernels (`graph_optimization="all"`), the float
emulation of a QDQ graph (`"disable"`: DequantizeLinear then float ops, exactly what the graph
says), and OpenVINO.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

KINDS = ("classifier", "embedding")


def crops(preprocess, count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` random crops of the bundled photos, preprocessed (N, C, H, W), and their ids."""
    from edgeforge.data import bundled

    images, ids = bundled.natural(count, seed)
    return np.stack([preprocess(im) for im in images]).astype(np.float32), ids


def run(model: str | os.PathLike, x: np.ndarray, runtime: str = "onnxruntime", **options: Any) -> np.ndarray:
    """The first output of `model` for every sample of `x`, stacked (N, ...).

    `runtime` is an edgeforge runtime name (onnxruntime, openvino); options go to its Runner
    (e.g. graph_optimization="disable" for ONNX Runtime's float emulation of a QDQ graph)."""
    from edgeforge.runtimes import create_runner

    runner = create_runner(runtime, model, **options)
    with runner:
        name = runner.input_specs()[0].name
        out = [next(iter(runner.infer({name: x[i:i + 1]}).values())) for i in range(len(x))]
    return np.concatenate(out).reshape(len(x), -1)


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


# A crop is "decided" when the reference's top-1 softmax probability beats its runner-up by at
# least this much. On the bundled photos about one crop in ten is a near tie (ImageNet
# MobileNetV2: margin < 0.022 on 10% of 200 crops), and any perturbation flips those: FP32
# itself with 1e-3 input noise agreed with clean FP32 on 0.995 of them, and of the 18 crops an
# INT8 model (entropy) disagreed on, 13 had a margin under 0.025. Top-1 agreement on decided
# crops separates a real loss of accuracy from coin flips.
DECIDED_MARGIN = 0.05


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def classifier_agreement(ref: np.ndarray, out: np.ndarray) -> dict:
    """Top-1 agreement, top-5 (reference top-1 within the other's top-5), the mean
    KL(softmax ref || softmax out) (a continuous measure: far less noisy than counting flips), and
    top-1 agreement on the crops the reference decides clearly (DECIDED_MARGIN)."""
    ref, out = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    r1 = ref.argmax(1)
    o5 = _topk(out, min(5, out.shape[1]))
    res = {"count": int(len(ref)),
           "top1_agreement": round(float((r1 == o5[:, 0]).mean()), 4),
           "top5_agreement": round(float((o5 == r1[:, None]).any(1).mean()), 4)}
    if ref.shape[1] > 1:
        lp, lq = _log_softmax(ref), _log_softmax(out)
        res["kl"] = round(float((np.exp(lp) * (lp - lq)).sum(1).mean()), 6)
        p2 = np.sort(np.exp(lp), axis=1)[:, -2:]
        decided = (p2[:, 1] - p2[:, 0]) >= DECIDED_MARGIN
        res["decided"] = {"margin": DECIDED_MARGIN, "count": int(decided.sum()),
                          "top1_agreement": round(float((r1 == o5[:, 0])[decided].mean()), 4)
                          if decided.any() else None}
    return res


def _unit(e: np.ndarray) -> np.ndarray:
    e = e.reshape(len(e), -1).astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """Index of each sample's nearest other sample by cosine."""
    u = _unit(emb)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def embedding_agreement(ref: np.ndarray, out: np.ndarray) -> dict:
    """Per-crop cosine (mean, min) and nearest-neighbour agreement between two embeddings."""
    cos = (_unit(ref) * _unit(out)).sum(1)
    res = {"count": int(len(ref)), "mean_cosine": round(float(cos.mean()), 6),
           "min_cosine": round(float(cos.min()), 6)}
    if len(ref) > 2:
        res["nn_agreement"] = round(float((nearest_neighbours(ref) == nearest_neighbours(out)).mean()), 4)
    return res


def agreement(ref: np.ndarray, out: np.ndarray, kind: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: accepted {', '.join(KINDS)}")
    return classifier_agreement(ref, out) if kind == "classifier" else embedding_agreement(ref, out)


def headline(result: dict, kind: str) -> float | None:
    """The one number a table sorts by: top-1 agreement, or nearest-neighbour agreement."""
    return result.get("top1_agreement" if kind == "classifier" else "nn_agreement")


@lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...] | None:
    try:
        from timm.data import ImageNetInfo
    except ImportError:  # timm (and torch) are not on a device that only runs the agent
        return None
    info = ImageNetInfo()
    # "tabby, tabby cat" -> "tabby": the first synonym is what a person reads in a table
    return tuple(info.index_to_description(i).split(",")[0] for i in range(info.num_classes()))


def class_name(index: int) -> str:
    names = _imagenet_names()
    return names[index] if names and 0 <= index < len(names) else f"class {index}"


def examples(ref: np.ndarray, out: np.ndarray, ids: Sequence[str], count: int = 4) -> list[dict]:
    """A few crops with the FP32 and INT8 top-1 ImageNet class names: disagreements first (the
    ones worth looking at), then agreements, in crop order."""
    r1, o1 = ref.reshape(len(ref), -1).argmax(1), out.reshape(len(out), -1).argmax(1)
    order = [i for i in range(len(ids)) if r1[i] != o1[i]] + [i for i in range(len(ids)) if r1[i] == o1[i]]
    return [{"crop": ids[i], "fp32": class_name(int(r1[i])), "int8": class_name(int(o1[i]))}
            for i in order[:count]]
