#!/usr/bin/env python
"""Train the small, real fixtures that accuracy tests and benchmarks rest on.

Each fixture is a recipe YAML under `fixtures/` (a small variant of a recipe family) trained on
scikit-learn's handwritten digits (train split; the eval split is held out) on the CPU in a few
minutes, deterministically (fixed seeds, fixed data order, single-process data). Outputs, per
fixture: `fixtures/<name>.pt` (state dict) and `fixtures/<name>.json` (eval top-1, training
settings, sha256 of the weights).

    .venv/bin/python scripts/train_fixtures.py                 # every fixture
    .venv/bin/python scripts/train_fixtures.py efficientformer_v2_digits --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeforge import recipes  # noqa: E402
from edgeforge.artifacts import sha256_file, write_json_atomic  # noqa: E402
from edgeforge.data import bundled  # noqa: E402
from edgeforge.data.preprocess import Preprocess  # noqa: E402
from edgeforge.models import build_model  # noqa: E402

# name -> training settings; the recipe is fixtures/<name>.yaml if present, else the recipe of that
# name (the families' `tiny` variants are already 10-class, 64x64: they are trained as they are)
FIXTURES = {
    "efficientformer_v2_digits": dict(epochs=6, batch=64, lr=3e-3, weight_decay=0.05),
    "rmt_tiny": dict(epochs=8, batch=64, lr=3e-3, weight_decay=0.05),
    "sit_tiny": dict(epochs=8, batch=64, lr=3e-3, weight_decay=0.05),
    "fmvit_tiny": dict(epochs=8, batch=64, lr=3e-3, weight_decay=0.05),
    "trecvit_tiny": dict(epochs=10, batch=32, lr=2e-3, weight_decay=0.05),
}


def fixture_recipe(name: str, out_dir: Path = ROOT / "fixtures") -> str:
    """The recipe a fixture trains: fixtures/<name>.yaml, or the recipe named <name>."""
    path = out_dir / f"{name}.yaml"
    return str(path) if path.is_file() else name


def digit_clip(img: np.ndarray, frames: int, index: int) -> list[np.ndarray]:
    """A clip of a digit under a slow camera pan (direction fixed by the sample index)."""
    pad = np.pad(img, 2, mode="edge")
    dy, dx = [(1, 1), (1, -1), (-1, 1), (-1, -1)][index % 4]
    out = []
    for t in np.linspace(0, 1, frames):
        oy, ox = int(round(2 + dy * 2 * t)), int(round(2 + dx * 2 * t))
        out.append(pad[oy:oy + img.shape[0], ox:ox + img.shape[1]])
    return out


def digits_tensors(pre: Preprocess, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labels = bundled.digits(split)
    x = np.stack([pre(im) if not pre.frames else pre.clip(digit_clip(im, pre.frames, i))
                  for i, im in enumerate(imgs)])
    return torch.from_numpy(x), torch.from_numpy(labels)


def augment(x: torch.Tensor, g: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to max_shift pixels (same shift for every frame of a clip)."""
    if max_shift <= 0:
        return x
    shape = x.shape
    h, w = shape[-2:]
    xp = F.pad(x.reshape(-1, *shape[-3:]), [max_shift] * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=g).tolist()
    return xp[..., dy:dy + h, dx:dx + w].reshape(shape).contiguous()


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 100) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
    return correct / len(x)


def train(name: str, epochs: int, batch: int, lr: float, weight_decay: float, seed: int = 0,
          out_dir: Path = ROOT / "fixtures") -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    recipe_ref = fixture_recipe(name, out_dir)
    recipe = recipes.load(recipe_ref)
    pre = Preprocess.from_input_spec(recipe.spec.input)
    model = build_model(recipe.spec.builder, **recipe.spec.builder_args)
    xtr, ytr = digits_tensors(pre, "train")
    xev, yev = digits_tensors(pre, "eval")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(xtr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    shift = max(1, pre.height // 16)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=g)
        total = 0.0
        for i in range(0, len(xtr), batch):
            idx = order[i:i + batch]
            xb = augment(xtr[idx], g, shift)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        acc = evaluate(model, xev, yev)
        print(f"[{name}] epoch {ep + 1}/{epochs} loss {total / len(xtr):.4f} eval top-1 {acc:.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    ckpt = out_dir / f"{name}.pt"
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, ckpt)
    meta = {"name": name, "recipe": recipe_ref if not recipe_ref.startswith(str(ROOT)) else
            str(Path(recipe_ref).relative_to(ROOT)), "weights": f"fixtures/{name}.pt",
            "sha256": sha256_file(ckpt), "eval_top1": evaluate(model, xev, yev), "eval_split": "digits/eval",
            "eval_count": len(xev), "train_count": len(xtr), "epochs": epochs, "batch": batch, "lr": lr,
            "weight_decay": weight_decay, "seed": seed, "train_seconds": round(time.time() - t0, 1),
            "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}
    write_json_atomic(out_dir / f"{name}.json", meta)
    print(json.dumps(meta, indent=2))
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"fixtures to train (default: all: {', '.join(FIXTURES)})")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.names or list(FIXTURES)
    for n in names:
        if n not in FIXTURES:
            ap.error(f"unknown fixture {n!r}; known: {', '.join(FIXTURES)}")
        cfg = dict(FIXTURES[n])
        if args.epochs:
            cfg["epochs"] = args.epochs
        train(n, **cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
