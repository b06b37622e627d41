"""Calibration sets: a small YAML definition plus the code that materialises it deterministically.

```yaml
# calib/natural.yaml
name: natural
source: {kind: natural}          # digits | natural | clips | folder | npz | video
count: 64                        # samples drawn (quantize --num-samples takes a prefix)
seed: 0                          # sampling seed
on_corrupt: skip                 # skip (report by path) | refuse
```
Preprocessing (resize, mean/std, frames) comes from the recipe's input spec, so the same set
serves every model. A set is addressed by a YAML path, by `NAME` (looked up as
`calib/NAME.yaml` in the working directory, then in the repository), or by a bundled name
(`digits`, `natural`, `clips`). Its hash (definition + preprocessing + the exact input bytes)
goes into quant.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeforge.data import bundled
from edgeforge.data.preprocess import Preprocess
from edgeforge.data.sources import (Unreadable, list_clips, list_image_folder, load_npz,
                                    read_clip, read_image)
from edgeforge.errors import BadInput

BUNDLED = ("digits", "natural", "clips")


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["digits", "natural", "clips", "folder", "npz", "video"]
    path: str | None = None
    split: Literal["train", "eval", "all"] = "train"  # digits only
    key: str | None = None  # npz only: array name
    labels_key: str | None = None  # npz only


class CalibDef(BaseModel):
    """A calibration set definition (one YAML file)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: Source
    count: int = Field(64, gt=0)
    seed: int = 0
    on_corrupt: Literal["skip", "refuse"] = "skip"
    description: str = ""
    base_dir: str | None = Field(None, exclude=True)  # where relative paths resolve

    def resolved_path(self) -> Path:
        if not self.source.path:
            raise BadInput(f"calibration set {self.name!r}: source.kind {self.source.kind!r} needs source.path")
        p = Path(self.source.path)
        if not p.is_absolute() and self.base_dir:
            p = Path(os.path.normpath(Path(self.base_dir) / p))
        return p

    def identity(self) -> dict:
        d = self.model_dump(mode="json", exclude={"base_dir", "description"})
        return d


@dataclass
class CalibData:
    """A materialised set: preprocessed samples (N, ...) float32, labels, ids, what was skipped."""

    definition: CalibDef
    x: np.ndarray
    labels: np.ndarray | None
    ids: list[str]
    preprocess: Preprocess
    skipped: list[tuple[str, str]] = field(default_factory=list)
    hash: str = ""

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch: int = 1):
        for i in range(0, len(self.x), batch):
            yield self.x[i:i + batch]

    def summary(self) -> dict:
        return {"name": self.definition.name, "hash": self.hash, "count": len(self.x),
                "shape": list(self.x.shape[1:]), "source": self.definition.source.model_dump(mode="json"),
                "seed": self.definition.seed, "preprocess": self.preprocess.describe(),
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


# ----------------------------------------------------------------------------- definitions
def _search_dirs() -> list[Path]:
    dirs = [Path.cwd() / "calib"]
    if os.environ.get("EDGEFORGE_CALIB"):
        dirs.insert(0, Path(os.environ["EDGEFORGE_CALIB"]))
    repo = Path(__file__).resolve().parents[2] / "calib"
    if repo not in dirs:
        dirs.append(repo)
    return dirs


def load_definition(name_or_path: str | os.PathLike | CalibDef) -> CalibDef:
    """Resolve a calibration set by YAML path, `calib/NAME.yaml`, or bundled name."""
    if isinstance(name_or_path, CalibDef):
        return name_or_path
    s = str(name_or_path)
    p = Path(s)
    candidates = [p] if p.suffix in (".yaml", ".yml") else [d / f"{s}.yaml" for d in _search_dirs()]
    for c in candidates:
        if c.is_file():
            return _parse(c)
    if s in BUNDLED:
        return CalibDef(name=s, source=Source(kind=s))
    if p.suffix in (".yaml", ".yml"):
        raise BadInput(f"{p}: calibration set file not found")
    raise BadInput(f"unknown calibration set {s!r}: no {s}.yaml in "
                   f"{', '.join(str(d) for d in _search_dirs())} and not bundled "
                   f"(bundled: {', '.join(BUNDLED)}); make one with `edgeforge calib make FOLDER --out calib/{s}.yaml`")


def _parse(path: Path) -> CalibDef:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a mapping with name, source, count, seed")
    raw.setdefault("name", path.stem)
    try:
        d = CalibDef(**raw)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise BadInput(f"{path}: {errs}") from e
    d.base_dir = str(path.resolve().parent)
    return d


# ----------------------------------------------------------------------------- materialise
def materialize(defn: str | CalibDef, preprocess: Preprocess, num_samples: int | None = None,
                on_corrupt: str | None = None) -> CalibData:
    """Load and preprocess the set's samples (the first `num_samples` of its sampled order)."""
    d = load_definition(defn)
    policy = on_corrupt or d.on_corrupt
    n = num_samples or d.count
    kind = d.source.kind
    skipped: list[tuple[str, str]] = []
    labels = None
    if kind == "digits":
        imgs, labs = bundled.digits(d.source.split)
        idx = np.random.default_rng(d.seed).permutation(len(imgs))[:n]
        items = [preprocess(imgs[i]) if not preprocess.frames else preprocess([imgs[i]]) for i in idx]
        ids = [f"digits/{d.source.split}#{int(i)}" for i in idx]
        labels = labs[idx]
    elif kind == "natural":
        crops, ids = bundled.natural(n, d.seed)
        items = [preprocess(c) if not preprocess.frames else preprocess([c]) for c in crops]
    elif kind == "clips":
        clips, ids = bundled.clips(n, preprocess.frames or 8, d.seed)
        if preprocess.frames:
            items = [preprocess.clip(c) for c in clips]
        else:  # an image model calibrated on clips sees their middle frames
            items = [preprocess.image(c[len(c) // 2]) for c in clips]
    elif kind == "npz":
        path = d.resolved_path()
        try:
            x, y = load_npz(path, d.source.key, d.source.labels_key)
        except FileNotFoundError as e:
            raise BadInput(f"{path}: file not found") from e
        except Unreadable as e:
            raise BadInput(f"calibration set {d.name!r}: {e}") from e
        idx = np.random.default_rng(d.seed).permutation(len(x))[:n]
        items, ids = [], []
        for i in idx:
            items.append(_npz_sample(x[i], preprocess, path))
            ids.append(f"{path}#{int(i)}")
        labels = y[idx] if y is not None else None
    elif kind in ("folder", "video"):
        path = d.resolved_path()
        try:
            listed = list_clips(path) if kind == "video" else list_image_folder(path)[0]
        except FileNotFoundError as e:
            raise BadInput(f"calibration set {d.name!r}: {e}") from e
        if not listed:
            raise BadInput(f"{path}: no {'clips' if kind == 'video' else 'images'} found "
                           f"(accepted image types: png, jpg, bmp, gif, tif, webp)")
        order = np.random.default_rng(d.seed).permutation(len(listed))
        items, ids, labs = [], [], []
        for i in order:
            if len(items) >= n:
                break
            it = listed[i]
            try:
                if kind == "video":
                    frames = read_clip(it.id)
                    items.append(preprocess.clip(frames) if preprocess.frames else preprocess.image(frames[len(frames) // 2]))
                else:
                    img = read_image(it.id)
                    items.append(preprocess(img) if not preprocess.frames else preprocess([img]))
            except Unreadable as e:
                if policy == "refuse":
                    raise BadInput(f"calibration set {d.name!r}: unreadable file {e.path}: {e.reason} "
                                   "(remove it, or set on_corrupt: skip)") from e
                skipped.append((e.path, e.reason))
                continue
            ids.append(it.id)
            labs.append(it.label)
        if all(lb is not None for lb in labs) and labs:
            labels = np.asarray(labs, np.int64)
    else:  # pragma: no cover - pydantic restricts kind
        raise BadInput(f"unknown source kind {kind!r}")
    if not items:
        raise BadInput(f"calibration set {d.name!r}: no usable samples"
                       + (f" ({len(skipped)} unreadable, first: {skipped[0][0]})" if skipped else ""))
    x = np.ascontiguousarray(np.stack(items).astype(np.float32))
    data = CalibData(d, x, labels, list(ids), preprocess, skipped)
    data.hash = calib_hash(d, preprocess, x)
    return data


def _npz_sample(s: np.ndarray, pre: Preprocess, path: Path) -> np.ndarray:
    """An npz sample already in model layout (float, == input shape) is used as-is; else it is an image."""
    if s.shape == tuple(pre.shape) and np.issubdtype(s.dtype, np.floating):
        return s.astype(np.float32)
    if pre.frames and s.ndim == 4:
        return pre.clip(list(s))
    if s.ndim in (2, 3):
        if s.ndim == 3 and s.shape[0] in (1, 3) and s.shape[2] not in (1, 3, 4):
            s = s.transpose(1, 2, 0)  # CHW image -> HWC
        return pre(s) if not pre.frames else pre([s])
    raise BadInput(f"{path}: sample shape {s.shape} is neither the model input {tuple(pre.shape)} nor an image")


def calib_hash(defn: CalibDef, pre: Preprocess, x: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"def": defn.identity(), "pre": pre.describe()}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
    return h.hexdigest()


def load_calib(name_or_path, input_spec, num_samples: int | None = None,
               on_corrupt: str | None = None) -> CalibData:
    """Materialise a calibration set for a recipe input spec (the usual entry point)."""
    return materialize(name_or_path, Preprocess.from_input_spec(input_spec), num_samples, on_corrupt)


# ----------------------------------------------------------------------------- make / show
def make(folder: str | os.PathLike, out: str | os.PathLike, kind: str = "auto", count: int = 64,
         seed: int = 0, on_corrupt: str = "skip", name: str | None = None) -> tuple[CalibDef, dict]:
    """Write a calibration set YAML for FOLDER (or an .npz) after checking every file decodes.

    Returns (definition, scan) where scan has `total`, `readable`, `unreadable` [(path, reason)].
    With on_corrupt='refuse', any unreadable file raises BadInput naming it.
    """
    from edgeforge.artifacts import write_text_atomic

    src = Path(folder)
    out = Path(out)
    if not src.exists():
        raise BadInput(f"{src}: not found")
    if kind == "auto":
        if src.is_file() and src.suffix == ".npz":
            kind = "npz"
        elif src.is_dir() and list_clips(src) and not list_image_folder(src)[0]:
            kind = "video"
        else:
            kind = "folder"
    unreadable: list[tuple[str, str]] = []
    if kind == "npz":
        try:
            x, _ = load_npz(src)
        except Unreadable as e:
            raise BadInput(str(e)) from e
        total = len(x)
    elif kind == "video":
        items = list_clips(src)
        total = len(items)
        for it in items:
            try:
                read_clip(it.id)
            except Unreadable as e:
                unreadable.append((e.path, e.reason))
    else:
        items, _ = list_image_folder(src)
        total = len(items)
        for it in items:
            try:
                read_image(it.id)
            except Unreadable as e:
                unreadable.append((e.path, e.reason))
    if total == 0:
        raise BadInput(f"{src}: no samples found (kind {kind})")
    if unreadable and on_corrupt == "refuse":
        listing = "; ".join(f"{p} ({r})" for p, r in unreadable[:5])
        raise BadInput(f"{len(unreadable)} unreadable file(s) in {src}: {listing}"
                       + (" ..." if len(unreadable) > 5 else "") + " (remove them or pass --on-corrupt skip)")
    readable = total - len(unreadable)
    rel = os.path.relpath(src.resolve(), out.resolve().parent)
    defn = CalibDef(name=name or out.stem, source=Source(kind=kind, path=rel),
                    count=min(count, readable) if readable else count, seed=seed, on_corrupt=on_corrupt)
    doc = {"name": defn.name, "source": defn.source.model_dump(mode="json", exclude_none=True,
                                                               exclude_defaults=False),
           "count": defn.count, "seed": seed, "on_corrupt": on_corrupt}
    if kind != "digits":
        doc["source"].pop("split", None)
    write_text_atomic(out, yaml.safe_dump(doc, sort_keys=False))
    defn.base_dir = str(out.resolve().parent)
    return defn, {"total": total, "readable": readable, "unreadable": unreadable, "kind": kind}


def channel_stats(x: np.ndarray) -> dict:
    """Per-channel mean/std/min/max of preprocessed samples (N,C,H,W) or (N,T,C,H,W)."""
    c_axis = 2 if x.ndim == 5 else 1
    axes = tuple(i for i in range(x.ndim) if i != c_axis)
    return {"mean": x.mean(axis=axes).tolist(), "std": x.std(axis=axes).tolist(),
            "min": x.min(axis=axes).tolist(), "max": x.max(axis=axes).tolist()}


def contact_sheet(data: CalibData, out: str | os.PathLike, max_items: int = 64, tile: int = 96) -> Path:
    """Save a grid of the (denormalised) samples as a PNG; video clips show their first frame."""
    from PIL import Image

    from edgeforge.artifacts import atomic_path

    xs = data.x[:max_items]
    n = len(xs)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (32, 32, 32))
    for i, s in enumerate(xs):
        frame = s[0] if s.ndim == 4 else s
        img = Image.fromarray(data.preprocess.denormalize(frame)).resize((tile - 2, tile - 2), Image.NEAREST)
        sheet.paste(img, ((i % cols) * tile + 1, (i // cols) * tile + 1))
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
