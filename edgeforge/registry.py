"""Registries filled by importing a package's modules: model families (`edgeforge.models`) and
quantization methods (`edgeforge.quant.methods`) register themselves when their file is imported,
so adding one is adding a file."""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package: str, path, skip: tuple[str, ...] = ()) -> None:
    """Import every module of `package` (its `__path__`) except private ones and `skip`."""
    for mod in pkgutil.iter_modules(path):
        if not mod.name.startswith("_") and mod.name not in skip:
            importlib.import_module(f"{package}.{mod.name}")
