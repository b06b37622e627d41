"""`percentile`: the 0.01 / 99.99 percentiles of each activation (clips rare outliers)."""

from edgeforge.quant.methods import Method, register_method


@register_method
class Percentile(Method):
    name = "percentile"
    summary = "99.99th-percentile ranges"
    observer = "percentile"
