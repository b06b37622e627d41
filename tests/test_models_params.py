"""Parameter counts of our implementations against the published figures (within 5%).

Every variant of our families with a published `params_m` is built on the meta device (no
memory, no compute), so the 100M+ variants cost nothing here.
"""

from __future__ import annotations

import pytest
import torch

from edgeforge.models import build_model
from edgeforge.recipes import all_recipes

FAMILIES = {"rmt", "sit", "trecvit", "fmvit", "token_filter"}
PUBLISHED = {n: r for n, r in all_recipes().items() if r.family in FAMILIES and r.spec.published.params_m}


def test_published_variants_are_covered():
    expected = {f"rmt_{v}" for v in "tsbl"} | {f"sit_{v}" for v in ("t", "xs", "s", "m", "l")}
    assert expected <= set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_within_5_percent_of_published(name):
    recipe = PUBLISHED[name]
    with torch.device("meta"):
        model = build_model(recipe.spec.builder, **recipe.spec.builder_args)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / recipe.spec.published.params_m - 1) <= 0.05, (params, recipe.spec.published.params_m)


def test_sit_with_aux_head_matches_the_paper_closely():
    """The paper's counts include the token-labelling auxiliary head; with it we are within 0.5%."""
    from edgeforge.models.sit import SIT_CONFIGS, SiT

    for size, published in {"t": 15.9, "xs": 25.6, "m": 55.6, "l": 148.2}.items():
        with torch.device("meta"):
            model = SiT(SIT_CONFIGS[size], include_aux_head=True)
        assert abs(sum(p.numel() for p in model.parameters()) / 1e6 / published - 1) <= 0.005
