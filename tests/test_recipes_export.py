"""The generic recipe test: every recipe variant exports to ONNX with parity (design.md, Testing).

Parametrised over every variant of every recipe file, so a new recipe is covered the moment it
is added; the guard below fails when something ships without coverage.
"""

from __future__ import annotations

import json
import os

import onnx
import pytest

from edgeforge import models
from edgeforge.export import export_recipe
from edgeforge.recipes import all_recipes, recipes_dir

RECIPES = all_recipes()

# Exporting a 50M+ parameter model (onnxslim, three parity inputs) takes minutes on CI's two
# cores; those variants run with EDGEFORGE_HEAVY=1 (`make test-heavy`), the rest always.
HEAVY_PARAMS_M, HEAVY_GMACS = 40.0, 6.0
RUN_HEAVY = os.environ.get("EDGEFORGE_HEAVY") == "1"


def skip_if_heavy(recipe) -> None:
    if RUN_HEAVY:
        return
    from edgeforge.export.model_card import measure

    card = measure(recipe)
    params_m = (card.params or 0) / 1e6
    gmacs = (card.macs or 0) / 1e9
    if params_m > HEAVY_PARAMS_M or gmacs > HEAVY_GMACS:
        pytest.skip(f"heavy variant ({params_m:.1f}M params, {gmacs:.2f} GMACs): runs with EDGEFORGE_HEAVY=1 "
                    "(make test-heavy)")


def uses_custom_ops(recipe) -> bool:
    """Whether the recipe's model calls edgeforge's custom ops: one forward on the meta device
    (no compute) with the real op entry points wrapped by call counters. timm models never do."""
    import torch

    from edgeforge.ops import api

    if not recipe.spec.builder.startswith("edgeforge:"):
        return False
    calls = []
    originals = {n: getattr(api, n) for n in ("linear_scan", "gated_attention")}

    def counting(fn):
        def wrapped(*a, **k):
            calls.append(fn.__name__)
            return fn(*a, **k)

        return wrapped

    try:
        for n, fn in originals.items():
            setattr(api, n, counting(fn))
        with torch.device("meta"), torch.no_grad():
            model = models.build_model(recipe.spec.builder, **recipe.spec.builder_args)
            inputs = (tuple(v.to("meta") for v in model.export_inputs(1).values())
                      if callable(getattr(model, "export_inputs", None)) else
                      (torch.empty(1, *recipe.spec.input.shape),))
            model(*inputs)
    finally:
        for n, fn in originals.items():
            setattr(api, n, fn)
    return bool(calls)


# plugin mode applies to models that call the custom ops; whether one does is checked inside the
# test (a meta-device forward), which keeps collection fast.
CASES = [(n, "decompose") for n in sorted(RECIPES)] + [
    (n, "plugin") for n in sorted(RECIPES) if RECIPES[n].spec.builder.startswith("edgeforge:")]


@pytest.mark.parametrize("name, custom_ops", CASES)
def test_every_recipe_variant_exports_with_parity(name, custom_ops, tmp_path):
    recipe = RECIPES[name]
    skip_if_heavy(recipe)
    if custom_ops == "plugin":
        from edgeforge.ops.native import ort_library_path

        if not uses_custom_ops(recipe):
            pytest.skip(f"{name} uses no custom ops: plugin and decompose exports are the same graph")

        if ort_library_path() is None:
            pytest.skip("the edgeforge ONNX Runtime kernel library is not built (`edgeforge plugins build`)")
    result = export_recipe(recipe, out_dir=tmp_path, custom_ops=custom_ops, check_simplify_latency=False)
    entry = result.entry
    model_ops = entry["onnx"]["ops"]
    has_custom = any(op.startswith("edgeforge::") for op in model_ops)
    assert has_custom == (custom_ops == "plugin"), model_ops
    assert result.onnx_path.is_file()
    parity = entry["parity"]
    assert parity["passed"], parity
    assert parity["rel_err"] <= recipe.spec.parity.tol
    assert entry["onnx"]["gathers_over_initializers"] == 0
    for rec in entry["transforms"]:  # each deploy transform was checked: outputs before == after
        assert rec["rel_err"] <= recipe.spec.parity.tol
    if entry["transforms"]:
        # the deploy transforms leave a simpler graph: fewer operators (Constant nodes are data:
        # the exporter emits one per use of a frozen table; see graph_checks.operator_count)
        o = entry["onnx"]
        assert o["nodes_before_transforms"] > 0 and o["nodes_raw"] > 0
        assert o["operators_raw"] < o["operators_before_transforms"], o
    model = onnx.load(str(result.onnx_path))
    onnx.checker.check_model(model)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["steps"]["export"]["onnx"]["sha256"] == entry["onnx"]["sha256"]


@pytest.mark.parametrize("name", sorted(n for n, r in RECIPES.items() if r.spec.published.params_m))
def test_params_match_published(name):
    from edgeforge.export.model_card import measure

    recipe = RECIPES[name]
    card = measure(recipe)
    pub = recipe.spec.published
    assert card.params is not None, card.error
    assert abs(card.params / 1e6 / pub.params_m - 1) <= pub.params_tol, (card.params, pub.params_m)


def test_guard_every_recipe_file_and_model_is_covered():
    """Every recipe file loads and contributes variants, and every edgeforge model has a recipe."""
    files = sorted(recipes_dir().glob("*.yaml"))
    assert files, "no recipes found"
    covered_files = {r.source_file for r in RECIPES.values()}
    assert {str(f) for f in files} == covered_files
    builders = {r.spec.builder for r in RECIPES.values()}
    orphans = [m for m in models.edgeforge_models() if f"edgeforge:{m}" not in builders]
    assert not orphans, f"edgeforge models with no recipe (so no export test): {orphans}"
