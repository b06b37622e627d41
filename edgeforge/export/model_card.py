"""Model cards: measured params/MACs of our implementation beside the published numbers.

Measurement builds the model on torch's `meta` device (no memory, no compute), so listing every
variant, including the 100M-parameter ones, takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import yaml
from rich.console import Console
from rich.table import Table

from edgeforge.export.model_stats import count_macs, count_params
from edgeforge.models import build_model
from edgeforge.recipes import Recipe, all_recipes, load


@dataclass
class Card:
    recipe: Recipe
    params: int | None
    macs: int | None
    error: str | None = None

    @property
    def params_delta(self) -> float | None:
        pub = self.recipe.spec.published.params_m
        return None if pub is None or self.params is None else self.params / 1e6 / pub - 1

    @property
    def macs_delta(self) -> float | None:
        pub = self.recipe.spec.published.gmacs
        return None if pub is None or self.macs is None else self.macs / 1e9 / pub - 1


def measure(recipe: Recipe) -> Card:
    """Params and MACs at batch 1 of the recipe's input, measured on the meta device."""
    try:
        with torch.device("meta"):
            model = build_model(recipe.spec.builder, **recipe.spec.builder_args)
            if callable(getattr(model, "export_inputs", None)):
                inputs = tuple(v.to("meta") for v in model.export_inputs(1).values())
            else:
                inputs = (torch.empty(1, *recipe.spec.input.shape),)
            params = count_params(model)
            try:
                macs = count_macs(model, inputs)
            except Exception as e:  # noqa: BLE001 - an op without a meta kernel: params still count
                return Card(recipe, params, None, f"MACs not measured on meta: {type(e).__name__}: {e}")
        return Card(recipe, params, macs)
    except Exception as e:  # noqa: BLE001 - a card with the reason beats a crash of the whole listing
        return Card(recipe, None, None, f"{type(e).__name__}: {e}")


def _fmt(v: float | None, unit: str, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def _delta(d: float | None) -> str:
    return "" if d is None else f" ({d * 100:+.1f}%)"


def recipes_table(measure_models: bool = True) -> Table:
    t = Table(title="edgeforge recipes", title_justify="left")
    for col in ("recipe", "builder", "input", "params (published)", "GMACs (published)", "top-1 pub."):
        t.add_column(col)
    for name, r in all_recipes().items():
        card = measure(r) if measure_models else Card(r, None, None)
        pub = r.spec.published
        params = _fmt(card.params / 1e6 if card.params is not None else None, "M") + _delta(card.params_delta)
        macs = _fmt(card.macs / 1e9 if card.macs is not None else None, "", 3) + _delta(card.macs_delta)
        t.add_row(name, r.spec.builder, "x".join(map(str, r.spec.input.shape)),
                  f"{params} ({_fmt(pub.params_m, 'M')})", f"{macs} ({_fmt(pub.gmacs, '', 2)})",
                  _fmt(pub.top1, "", 1))
    return t


def show_recipe(name: str, measure: bool = True, console: Console | None = None) -> Card | None:
    console = console or Console()
    recipe = load(name)
    console.print(f"[bold]{recipe.name}[/]  ({recipe.source_file})")
    console.print(yaml.safe_dump(recipe.spec.model_dump(mode="json"), sort_keys=False).rstrip())
    if not measure:
        return None
    card = globals()["measure"](recipe)
    pub = recipe.spec.published
    t = Table(title="model card", title_justify="left")
    for col in ("", "edgeforge (measured)", "published"):
        t.add_column(col)
    t.add_row("params", _fmt(card.params / 1e6 if card.params is not None else None, " M") + _delta(card.params_delta),
              _fmt(pub.params_m, " M"))
    t.add_row("MACs", _fmt(card.macs / 1e9 if card.macs is not None else None, " G", 3) + _delta(card.macs_delta),
              _fmt(pub.gmacs, " G"))
    t.add_row("input", "x".join(map(str, recipe.spec.input.shape)) + f" ({recipe.spec.input.layout})", "")
    t.add_row("top-1 (ImageNet-1k)", "not measured (no ImageNet here)", _fmt(pub.top1, " %", 1))
    console.print(t)
    if pub.source or pub.note:
        console.print(f"published: {pub.source or ''} {pub.note or ''}".rstrip())
    if card.error:
        console.print(f"[yellow]note:[/] {card.error}")
    return card
