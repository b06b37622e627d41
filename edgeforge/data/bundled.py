"""Real data that ships with installed packages, materialised deterministically.

- `digits`: scikit-learn's handwritten digits (1797 8x8 gray images, labels 0-9), with a fixed
  train/eval split. Images are returned as uint8 HW; preprocessing upsamples them to the
  recipe's input size and repeats the gray channel.
- `natural`: random crops of the photographs that ship with scikit-image (`skimage.data`) and
  scikit-learn (`load_sample_images`: china.jpg, flower.jpg).
- `clips`: short camera-pan clips over those photographs (for NTCHW video inputs): a crop
  window that slides (and slowly zooms) across the photo frame by frame.
Nothing here downloads anything: only files installed with the packages are used.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DIGITS_SPLIT_SEED = 0
DIGITS_EVAL_COUNT = 500

# Photographs bundled with scikit-image (present without a network download).
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "immunohistochemistry",
                  "hubble_deep_field", "brick", "grass", "gravel", "moon", "coins", "clock", "cat")
# ... and with scikit-learn (sklearn.datasets.load_sample_image): two more colour scenes.
SKLEARN_PHOTOS = ("china", "flower")
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images / 16.0 * 255.0).round().clip(0, 255).astype(np.uint8)  # (1797, 8, 8)
    return imgs, d.target.astype(np.int64)


def digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,8,8), labels (N,)) for split 'train' (1297), 'eval' (500) or 'all'."""
    imgs, labels = _digits_arrays()
    if split == "all":
        return imgs, labels
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(imgs))
    if split == "eval":
        idx = order[-DIGITS_EVAL_COUNT:]
    elif split == "train":
        idx = order[:-DIGITS_EVAL_COUNT]
    else:
        raise ValueError(f"unknown digits split {split!r}; accepted: train, eval, all")
    idx = np.sort(idx)
    return imgs[idx], labels[idx]


@lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """One bundled photograph (scikit-image or scikit-learn) as HWC uint8 RGB."""
    from edgeforge.data.preprocess import to_uint8_rgb

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; bundled: {', '.join(PHOTOS)}")
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return to_uint8_rgb(load_sample_image(f"{name}.jpg"), 3)
    import skimage.data

    return to_uint8_rgb(getattr(skimage.data, name)(), 3)


def _crop_box(rng: np.random.Generator, h: int, w: int, min_frac: float = 0.25) -> tuple[int, int, int]:
    side_max = min(h, w)
    side = int(rng.uniform(min_frac, 1.0) * side_max)
    side = max(side, 8)
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    return y, x, side


def natural(count: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """`count` random square crops (HWC uint8) of the bundled photographs, with their ids
    (`photo[y0:y1,x0:x1]`; the crop is mirrored left-right when the id ends with `~`)."""
    rng = np.random.default_rng(seed)
    out, ids = [], []
    for i in range(count):
        name = PHOTOS[int(rng.integers(len(PHOTOS)))]
        img = photo(name)
        y, x, side = _crop_box(rng, *img.shape[:2])
        crop = img[y:y + side, x:x + side]
        flip = rng.random() < 0.5
        if flip:
            crop = crop[:, ::-1]
        out.append(np.ascontiguousarray(crop))
        ids.append(f"{name}[{y}:{y + side},{x}:{x + side}]" + ("~" if flip else ""))
    return out, ids


def clips(count: int, frames: int = 8, seed: int = 0) -> tuple[list[list[np.ndarray]], list[str]]:
    """`count` camera-pan clips (each a list of `frames` HWC uint8 frames) over the photographs."""
    rng = np.random.default_rng(seed)
    out, ids = [], []
    for i in range(count):
        name = PHOTOS[int(rng.integers(len(PHOTOS)))]
        img = photo(name)
        h, w = img.shape[:2]
        side0 = int(rng.uniform(0.3, 0.6) * min(h, w))
        zoom = rng.uniform(0.9, 1.1)
        side1 = int(np.clip(side0 * zoom, 8, min(h, w)))
        y0, x0 = int(rng.integers(0, h - side0 + 1)), int(rng.integers(0, w - side0 + 1))
        # a slow pan: the window moves by at most a fifth of its side over the clip
        reach = max(1, side0 // 5)
        y1 = int(np.clip(y0 + rng.integers(-reach, reach + 1), 0, h - side1))
        x1 = int(np.clip(x0 + rng.integers(-reach, reach + 1), 0, w - side1))
        seq = []
        for t in np.linspace(0.0, 1.0, frames):
            side = int(round(side0 + (side1 - side0) * t))
            y = int(round(y0 + (y1 - y0) * t))
            x = int(round(x0 + (x1 - x0) * t))
            y, x = min(y, h - side), min(x, w - side)
            seq.append(np.ascontiguousarray(img[y:y + side, x:x + side]))
        out.append(seq)
        ids.append(f"{name}:pan({y0},{x0})->({y1},{x1})")
    return out, ids
