"""`entropy`: TensorRT's KL-divergence threshold search on each activation's histogram."""

from edgeforge.quant.methods import Method, register_method


@register_method
class Entropy(Method):
    name = "entropy"
    summary = "KL-divergence (TensorRT entropy) thresholds"
    observer = "entropy"
