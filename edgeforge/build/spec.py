"""BUILD.yaml: a matrix of recipes x targets x precisions, with excludes and per-cell settings.

    name: edge-ci                        # optional, shown in the summary
    recipes:                             # a recipe name, a YAML path, or a mapping
      - fmvit_tiny
      - {recipe: fixtures/efficientformer_v2_digits.yaml, weights: fixtures/efficientformer_v2_digits.pt,
         name: digits}
    targets: [cpu-ort, cpu-openvino]
    precisions: [fp32, int8]             # int8: quantized with the cell's method (folder int8-<method>...)
    settings:                            # every cell's defaults
      calib: digits
      method: minmax
      num_samples: 16
      eval: null                         # accuracy set for bench --eval: .npz, image folder, or `digits`
      seed: 0
      bench: {iterations: 50, warmup: 5, min_time_s: 0.0, block_size: 5, threads: 1}
      budgets: {max_latency_ms: null, max_accuracy_drop: null, max_kernel_drift: null}
    exclude:                             # cells left out: every given key must match
      - {recipe: fmvit_tiny, target: cpu-openvino, precision: int8}
    cells:                               # per-cell settings, applied in order where `match` matches
      - match: {recipe: digits, precision: int8}
        settings: {method: percentile, budgets: {max_accuracy_drop: 2.0}}

Relative paths (recipes, weights, calibration YAMLs, eval sets) are relative to the build file.
Torch-free: listing the jobs of a build needs only this module.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeforge.errors import BadInput


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchSettings(_Strict):
    iterations: int = Field(50, ge=1)
    warmup: int = Field(5, ge=0)
    min_time_s: float = Field(0.0, ge=0)
    block_size: int = Field(5, ge=1)
    threads: int | None = Field(1, ge=0)


class Budgets(_Strict):
    """A cell breaks its budget (exit 1) when its p50 is above `max_latency_ms`, an INT8 model's
    top-1 agreement with FP32 (on the eval set, else on the timed inputs) is below
    100 - `max_accuracy_drop` points, or its kernels drift below `max_kernel_drift` dB."""

    max_latency_ms: float | None = Field(None, gt=0)
    max_accuracy_drop: float | None = Field(None, ge=0)
    max_kernel_drift: float | None = None


class CellSettings(_Strict):
    calib: str = "digits"
    method: Literal["minmax", "percentile", "mse", "entropy", "ort"] = "minmax"
    bits: Literal["w8a8", "w6a6", "w4a8", "w4a4"] = "w8a8"
    num_samples: int = Field(16, ge=1)
    eval: str | None = None
    eval_limit: int | None = Field(None, ge=1)
    seed: int = 0
    analysis: bool = False  # quantize's per-layer error analysis (slower)
    simulate: bool = False  # quantize's torch-simulation agreement check (slower)
    bench: BenchSettings = Field(default_factory=BenchSettings)
    budgets: Budgets = Field(default_factory=Budgets)


class RecipeEntry(_Strict):
    recipe: str
    weights: str | None = None
    name: str | None = None  # the id in cell names (default: the recipe's name)


class Match(_Strict):
    recipe: str | None = None
    target: str | None = None
    precision: str | None = None

    def matches(self, recipe: str, target: str, precision: str) -> bool:
        return all(v is None or v == actual for v, actual in
                   ((self.recipe, recipe), (self.target, target), (self.precision, precision)))


class CellOverride(_Strict):
    match: Match
    settings: dict[str, Any]


class BuildSpec(_Strict):
    name: str = "edgeforge build"
    recipes: list[RecipeEntry | str] = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(default_factory=lambda: ["fp32", "int8"], min_length=1)
    settings: CellSettings = Field(default_factory=CellSettings)
    exclude: list[Match] = Field(default_factory=list)
    cells: list[CellOverride] = Field(default_factory=list)

    @field_validator("recipes")
    @classmethod
    def _entries(cls, v):
        return [RecipeEntry(recipe=r) if isinstance(r, str) else r for r in v]


class Cell(BaseModel):
    """One cell of the matrix: a recipe on a target at a precision, with its settings."""

    id: str
    recipe_id: str  # the name in the cell id and the artifact folder
    recipe: str  # what recipes.load takes (resolved path or registry name)
    weights: str | None
    target: str
    precision: Literal["fp32", "fp16", "int8"]
    settings: CellSettings

    def job(self) -> dict:
        return {"id": self.id, "recipe": self.recipe_id, "target": self.target, "precision": self.precision}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_path(value: str | None, root: Path) -> str | None:
    """A path relative to the build file, when it names a file there; else the value as given."""
    if value is None or value.startswith("pypi:"):
        return value
    head, sep, variant = value.rpartition(":")
    if sep and head.endswith((".yaml", ".yml")):  # recipe.yaml:variant
        return f"{_resolve_path(head, root)}:{variant}"
    p = Path(value)
    if not p.is_absolute() and (root / p).exists():
        return str((root / p).resolve())
    return value


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "recipe"


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


class Build:
    """A loaded build file and its expanded cells."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise BadInput(f"{self.path}: no such build file")
        try:
            raw = yaml.safe_load(self.path.read_text())
        except yaml.YAMLError as e:
            raise BadInput(f"{self.path}: not valid YAML ({e})") from e
        if not isinstance(raw, dict):
            raise BadInput(f"{self.path}: expected a mapping with recipes, targets, precisions")
        try:
            self.spec = BuildSpec.model_validate(raw)
        except ValidationError as e:
            errs = "; ".join(f"{_where(x['loc'])}: {x['msg']}" for x in e.errors())
            raise BadInput(f"{self.path}: {errs}") from e
        self.root = self.path.resolve().parent
        self.cells = self._expand()

    def _expand(self) -> list[Cell]:
        from edgeforge import targets

        spec = self.spec
        for t in spec.targets:
            targets.load(t)  # BadInput naming the target and the ones there are
        ids: dict[str, str] = {}
        cells = []
        for i, entry in enumerate(spec.recipes):
            recipe = _resolve_path(entry.recipe, self.root) if ".yaml" in entry.recipe or ".yml" in entry.recipe \
                else entry.recipe
            base, _, variant = entry.recipe.rpartition(":") if ".yaml:" in entry.recipe or ".yml:" in entry.recipe \
                else (entry.recipe, "", "")
            rid = _safe(entry.name or (f"{Path(base).stem}_{variant}" if variant else Path(entry.recipe).stem
                                       if entry.recipe.endswith((".yaml", ".yml")) else entry.recipe))
            if rid in ids:
                raise BadInput(f"{self.path}: recipes.{i}: id {rid!r} is also recipes.{ids[rid]}'s; give one a `name`")
            ids[rid] = str(i)
            weights = _resolve_path(entry.weights, self.root)
            if weights and not weights.startswith("pypi:") and not Path(weights).is_file():
                raise BadInput(f"{self.path}: recipes.{i}.weights: {entry.weights}: no such file "
                               f"(relative paths are relative to {self.root})")
            for t in spec.targets:
                for p in spec.precisions:
                    if any(m.matches(rid, t, p) for m in spec.exclude):
                        continue
                    s = spec.settings.model_dump()
                    for j, o in enumerate(spec.cells):
                        if o.match.matches(rid, t, p):
                            s = _merge(s, o.settings)
                    try:
                        settings = CellSettings.model_validate(s)
                    except ValidationError as e:
                        errs = "; ".join(f"{_where(x['loc'])}: {x['msg']}" for x in e.errors())
                        raise BadInput(f"{self.path}: cells (for {rid}/{t}/{p}): {errs}") from e
                    if settings.eval and settings.eval != "digits":  # `digits`: the bundled labelled set
                        settings.eval = _resolve_path(settings.eval, self.root)
                    if settings.calib.endswith((".yaml", ".yml")):  # else a calib/NAME.yaml or bundled name
                        settings.calib = _resolve_path(settings.calib, self.root)
                    cells.append(Cell(id=f"{rid}.{t}.{p}", recipe_id=rid, recipe=recipe, weights=weights,
                                      target=t, precision=p, settings=settings))
        if not cells:
            raise BadInput(f"{self.path}: the excludes leave no cell to build")
        return cells

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise BadInput(f"--job {cell_id!r}: no such cell in {self.path}; cells: {', '.join(c.id for c in self.cells)}")
