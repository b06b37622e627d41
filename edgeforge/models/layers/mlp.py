"""Two-layer token MLP (Linear -> activation -> Linear), the FFN of every ViT block."""

from __future__ import annotations

from torch import nn


class Mlp(nn.Module):
    """`fc2(act(fc1(x)))` over the last dimension."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, act: type[nn.Module] = nn.GELU,
                 bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act()
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
