"""Shared layers of the edgeforge model families, one idea per file."""

from edgeforge.models.layers.attention import Attention
from edgeforge.models.layers.conv_bn import ConvBN, fuse_conv_bn_weights
from edgeforge.models.layers.mlp import Mlp
from edgeforge.models.layers.patch_embed import PatchEmbed
from edgeforge.models.layers.rep_conv import RepGroupConv
from edgeforge.models.layers.rms_norm import RMSNorm
from edgeforge.models.layers.vit_block import ViTBlock

__all__ = ["Attention", "ConvBN", "Mlp", "PatchEmbed", "RMSNorm", "RepGroupConv", "ViTBlock",
           "fuse_conv_bn_weights"]
