"""Multi-branch, multi-group reparameterizable conv (RepVGG / MobileOne style).

Training form: several Conv+BN branches of different kernel sizes and group counts, plus an
identity BN when the shapes allow, summed. Deploy form (`reparameterize()`): one conv. Folding
rests on three exact identities: BN after a conv is an affine map of the conv's weights; a
smaller kernel is a larger one zero-padded around its centre; a conv with `g*m` groups is a conv
with `g` groups whose weight is block-diagonal inside each group. So the branches are summed
into one conv with the coarsest group count among them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeforge.models.layers.conv_bn import ConvBN, fuse_conv_bn_weights


def _regroup(weight: torch.Tensor, groups: int, target_groups: int) -> torch.Tensor:
    """Express a conv weight with `groups` as an equivalent one with `target_groups` (a divisor)."""
    if groups == target_groups:
        return weight
    cout, cin_g, kh, kw = weight.shape
    ratio = groups // target_groups
    out_per_g = cout // groups
    out = weight.new_zeros(cout, cin_g * ratio, kh, kw)
    for g in range(groups):
        sub = g % ratio  # position of this small group inside its large group
        out[g * out_per_g:(g + 1) * out_per_g, sub * cin_g:(sub + 1) * cin_g] = weight[g * out_per_g:(g + 1) * out_per_g]
    return out


def _pad_kernel(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    pad = (kernel - weight.shape[-1]) // 2
    return F.pad(weight, [pad, pad, pad, pad]) if pad else weight


class RepGroupConv(nn.Module):
    """Sum of Conv(k_i, groups_i)+BN branches (+ identity BN); one conv after `reparameterize()`.

    `branches` is a list of (kernel, groups); every group count must be a multiple of the
    smallest, every kernel odd. Stride and channels are shared by all branches.
    """

    def __init__(self, cin: int, cout: int, branches: list[tuple[int, int]], stride: int = 1,
                 identity: bool = True):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.kernel = max(k for k, _ in branches)
        self.groups = min(g for _, g in branches)
        if any(g % self.groups for _, g in branches) or any(k % 2 == 0 for k, _ in branches):
            raise ValueError(f"branches {branches}: kernels must be odd and groups multiples of the smallest")
        self.branch_specs = list(branches)
        self.branches = nn.ModuleList(ConvBN(cin, cout, k, stride, groups=g) for k, g in branches)
        self.identity = nn.BatchNorm2d(cout) if identity and cin == cout and stride == 1 else None
        self.conv: nn.Conv2d | None = None  # the deploy-time conv

    def forward(self, x):
        if self.conv is not None:
            return self.conv(x)
        out = sum(b(x) for b in self.branches)
        return out + self.identity(x) if self.identity is not None else out

    @torch.no_grad()
    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = torch.zeros(self.cout, self.cin // self.groups, self.kernel, self.kernel)
        bias = torch.zeros(self.cout)
        for branch, (_, g) in zip(self.branches, self.branch_specs):
            w, b = branch.fused_weights()
            weight += _regroup(_pad_kernel(w, self.kernel), g, self.groups)
            bias += b
        if self.identity is not None:
            # identity = a 1x1 conv whose weight is 1 on the channel's own input
            ident = torch.zeros(self.cout, self.cin // self.groups, 1, 1)
            per_g = self.cin // self.groups
            for c in range(self.cout):
                ident[c, c % per_g, 0, 0] = 1.0
            w, b = fuse_conv_bn_weights(ident, None, self.identity)
            weight += _pad_kernel(w, self.kernel)
            bias += b
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.conv is not None:
            return
        w, b = self.fused_weights()
        self.conv = nn.Conv2d(self.cin, self.cout, self.kernel, self.stride, self.kernel // 2,
                              groups=self.groups, bias=True)
        self.conv.weight.copy_(w)
        self.conv.bias.copy_(b)
        del self.branches
        self.identity = None
        self.branches = nn.ModuleList()
