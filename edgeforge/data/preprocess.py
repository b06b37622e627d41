"""Preprocessing taken from a recipe's input spec: resize, to float, normalise (mean/std).

Images arrive as HWC (or HW) uint8 arrays; the result is CHW float32 for NCHW inputs, or TCHW
for NTCHW video clips (each frame processed alike). Resizing uses Pillow's bilinear filter, the
same filter for calibration and evaluation, so a model sees calibration data preprocessed exactly
as its eval data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Preprocess:
    """Resize to (height, width), scale to [0, 1], subtract mean and divide by std per channel."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    frames: int | None = None  # set for NTCHW (video) inputs

    @classmethod
    def from_input_spec(cls, spec) -> "Preprocess":
        """Build from a recipe `InputSpec` (shape without batch: C,H,W or T,C,H,W)."""
        if spec.layout == "NTCHW":
            t, c, h, w = spec.shape
            return cls(c, h, w, tuple(spec.mean), tuple(spec.std), frames=t)
        c, h, w = spec.shape
        return cls(c, h, w, tuple(spec.mean), tuple(spec.std))

    @property
    def shape(self) -> tuple[int, ...]:
        chw = (self.channels, self.height, self.width)
        return (self.frames, *chw) if self.frames else chw

    def describe(self) -> dict:
        return {"shape": list(self.shape), "mean": list(self.mean), "std": list(self.std),
                "resize": "bilinear"}

    def image(self, img: np.ndarray) -> np.ndarray:
        """One HWC/HW image (uint8, or float in [0,1]) -> CHW float32, normalised."""
        from PIL import Image

        img = to_uint8_rgb(img, self.channels)
        if img.shape[0] != self.height or img.shape[1] != self.width:
            mode = "L" if self.channels == 1 else "RGB"
            pil = Image.fromarray(img[..., 0] if self.channels == 1 else img, mode=mode)
            img = np.asarray(pil.resize((self.width, self.height), Image.BILINEAR))
            if img.ndim == 2:
                img = img[..., None]
        x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return (x - mean) / std

    def clip(self, frames: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """A sequence of frames -> TCHW float32; frames are sampled evenly to the recipe's T."""
        frames = list(frames)
        if not frames:
            raise ValueError("a clip needs at least one frame")
        t = self.frames or len(frames)
        idx = np.linspace(0, len(frames) - 1, t).round().astype(int)
        return np.stack([self.image(frames[i]) for i in idx])

    def __call__(self, item) -> np.ndarray:
        if self.frames:
            return self.clip(item)
        return self.image(item)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """CHW normalised float -> HWC uint8 (for contact sheets)."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        img = (x * std + mean).clip(0, 1) * 255
        img = img.round().astype(np.uint8).transpose(1, 2, 0)
        return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def to_uint8_rgb(img: np.ndarray, channels: int = 3) -> np.ndarray:
    """Gray/RGBA/bool/float images -> HWC uint8 with `channels` channels (1 or 3)."""
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        f = img.astype(np.float32)
        # floats in [0,1] are scaled; anything else is min-max stretched into 0..255
        if f.min() >= 0 and f.max() <= 1:
            f = f * 255
        else:
            lo, hi = float(f.min()), float(f.max())
            f = (f - lo) / max(hi - lo, 1e-12) * 255
        img = f.round().clip(0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"expected an HW or HWC image, got shape {img.shape}")
    if img.shape[2] == 4:
        img = img[..., :3]
    if channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif channels == 1 and img.shape[2] == 3:
        img = (img.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)).round()
        img = img.clip(0, 255).astype(np.uint8)[..., None]
    elif img.shape[2] != channels:
        raise ValueError(f"cannot turn an image with {img.shape[2]} channels into {channels}")
    return img
