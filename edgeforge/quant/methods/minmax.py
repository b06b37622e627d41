"""`minmax`: each activation's observed min/max; per-channel weight min/max."""

from edgeforge.quant.methods import Method, register_method


@register_method
class MinMax(Method):
    name = "minmax"
    summary = "observed min/max ranges"
    observer = "minmax"
