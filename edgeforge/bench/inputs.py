"""Benchmark inputs generated from the artifact's input spec. Torch-free.

The spec comes from the manifest: `steps.export.inputs` ([{name, shape, dtype}]) and the
recipe's input (`steps.export.resolved_recipe.input`: name, layout, mean, std). The recipe's
image/clip input gets uniform [0, 1] pixels normalised with the recipe's mean/std (the value
range the model sees deployed); any other float input (a streaming state) starts at zeros, as
it does on a device; integer inputs are zeros.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from edgeforge.runtimes.base import TensorSpec


def recipe_input(export_entry: Mapping[str, Any] | None) -> dict:
    """The recipe's input spec from a manifest export entry ({} when unknown)."""
    if not export_entry:
        return {}
    resolved = export_entry.get("resolved_recipe") or export_entry.get("recipe")
    if isinstance(resolved, Mapping):
        spec = resolved.get("input") or resolved.get("spec", {}).get("input")
        if isinstance(spec, Mapping):
            return dict(spec)
    return {}


def specs_from_manifest(export_entry: Mapping[str, Any] | None) -> list[TensorSpec]:
    if not export_entry or not export_entry.get("inputs"):
        return []
    return [TensorSpec(i["name"], tuple(d if isinstance(d, int) and d > 0 else None for d in i["shape"]),
                       i.get("dtype", "float32")) for i in export_entry["inputs"]]


def make_feed(specs: Sequence[TensorSpec], input_spec: Mapping[str, Any] | None = None,
              batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """One feed for `specs` (see the module docstring); deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    input_spec = dict(input_spec or {})
    main = input_spec.get("name") or (specs[0].name if specs else None)
    feed = {}
    for spec in specs:
        shape = spec.concrete_shape(batch)
        dtype = np.dtype(spec.dtype)
        if spec.name == main and dtype.kind == "f":
            feed[spec.name] = normalised_pixels(rng, shape, input_spec).astype(dtype)
        else:
            feed[spec.name] = np.zeros(shape, dtype=dtype)
    return feed


def normalised_pixels(rng: np.random.Generator, shape: tuple[int, ...], input_spec: Mapping[str, Any]) -> np.ndarray:
    x = rng.random(shape, dtype=np.float32)
    mean, std = input_spec.get("mean"), input_spec.get("std")
    if not mean or not std:
        return x
    c_axis = 2 if input_spec.get("layout") == "NTCHW" else 1
    if len(shape) <= c_axis or shape[c_axis] != len(mean):
        return x
    view = [1] * len(shape)
    view[c_axis] = -1
    return (x - np.asarray(mean, np.float32).reshape(view)) / np.asarray(std, np.float32).reshape(view)
