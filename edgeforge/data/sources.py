"""Readers for user data: image folders, .npz arrays and video clips.

Every reader lists its items first (cheap, sorted, deterministic), then loads only the sampled
ones. A file that cannot be decoded is reported by path with the reason (`Unreadable`); the
caller decides to skip it or to refuse the whole set. Nothing unreadable is ever used silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif"}


class Unreadable(Exception):
    """A data file that cannot be decoded; `path` names it."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class Item:
    """One listed sample: an id (a path, or path#index) and its label if the layout gives one."""

    id: str
    label: int | None = None


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def read_image(path: str | Path) -> np.ndarray:
    """Decode one image file to an HWC/HW uint8 array, or raise `Unreadable`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise Unreadable(path, f"not a readable image ({type(e).__name__}: {e})") from e
    if arr.size == 0:
        raise Unreadable(path, "empty image")
    return arr


# ----------------------------------------------------------------------------- image folders
def list_image_folder(root: str | Path) -> tuple[list[Item], list[str] | None]:
    """Images under `root`: ImageFolder layout (one subfolder per class -> labels) or flat.

    Returns (items, class names or None). Hidden files and non-image files are not listed.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    flat = sorted(p for p in root.iterdir() if _is_image(p))
    if subdirs and not flat:
        classes = [d.name for d in subdirs]
        items = [Item(str(p), ci) for ci, d in enumerate(subdirs)
                 for p in sorted(d.rglob("*")) if _is_image(p)]
        return items, classes
    return [Item(str(p)) for p in sorted(root.rglob("*")) if _is_image(p)], None


# ----------------------------------------------------------------------------- npz
def load_npz(path: str | Path, key: str | None = None, labels_key: str | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """(samples, labels or None) from an .npz; `key` defaults to 'x', 'images', or the only array."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
        names = list(z.files)
    except (OSError, ValueError, EOFError) as e:
        raise Unreadable(path, f"not a readable .npz ({type(e).__name__}: {e})") from e
    if key is None:
        key = next((k for k in ("x", "images", "data", "inputs") if k in names), None)
        if key is None and len(names) == 1:
            key = names[0]
    if key not in names:
        raise Unreadable(path, f"no array {key!r}; arrays: {', '.join(names)} (set source.key)")
    try:
        x = z[key]
        y = None
        lk = labels_key or next((k for k in ("y", "labels", "targets") if k in names), None)
        if lk is not None and lk in names:
            y = z[lk].astype(np.int64)
    except (OSError, ValueError, EOFError) as e:
        raise Unreadable(path, f"array {key!r} is corrupt ({type(e).__name__}: {e})") from e
    if y is not None and len(y) != len(x):
        raise Unreadable(path, f"{len(x)} samples but {len(y)} labels")
    return x, y


# ----------------------------------------------------------------------------- video clips
def list_clips(root: str | Path) -> list[Item]:
    """Clips under `root`: each subfolder of frame images is one clip; each video file is one."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    items = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() and any(_is_image(f) for f in p.iterdir()):
            items.append(Item(str(p)))
        elif p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            items.append(Item(str(p)))
    return items


def read_clip(path: str | Path) -> list[np.ndarray]:
    """Frames of one clip (a frame folder, or a video file imageio can decode)."""
    path = Path(path)
    if path.is_dir():
        return [read_image(f) for f in sorted(path.iterdir()) if _is_image(f)]
    try:
        import imageio.v3 as iio

        frames = [np.asarray(f) for f in iio.imiter(path)]
    except Exception as e:  # noqa: BLE001 - any decoder failure means this file is unreadable
        raise Unreadable(path, f"cannot decode video ({type(e).__name__}: {e}); "
                               "a folder of frame images always works") from e
    if not frames:
        raise Unreadable(path, "video has no frames")
    return frames
