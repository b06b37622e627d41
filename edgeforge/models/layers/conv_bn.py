"""Conv2d + BatchNorm2d that folds into one Conv2d at deploy time (`reparameterize()`)."""

from __future__ import annotations

import torch
from torch import nn


def fuse_conv_bn_weights(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """Weights of the single conv equal to `bn(conv(x))` in eval mode."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    scale = gamma / std
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, 1, 1, 1), beta + (b - bn.running_mean) * scale


class ConvBN(nn.Module):
    """`bn(conv(x))`; after `reparameterize()` a single biased conv (idempotent)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 padding: int | None = None):
        super().__init__()
        padding = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.conv(x) if self.bn is None else self.bn(self.conv(x))

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the equivalent single conv, without changing the module."""
        if self.bn is None:
            bias = self.conv.bias if self.conv.bias is not None else torch.zeros(self.conv.out_channels)
            return self.conv.weight, bias
        return fuse_conv_bn_weights(self.conv.weight, self.conv.bias, self.bn)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:
            return
        w, b = self.fused_weights()
        c = self.conv
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                          dilation=c.dilation, groups=c.groups, bias=True)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        self.conv, self.bn = fused, None
