"""Versions of the toolchain that produced an artifact (recorded in every manifest step)."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

_PACKAGES = ("edgeforge", "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxslim",
             "openvino", "numpy", "coremltools", "tensorrt")


def toolchain_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Installed versions of the given packages (absent ones omitted), plus python and platform."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in packages:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            continue
    return out
