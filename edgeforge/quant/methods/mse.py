"""`mse` (OMSE): the clipping range minimising expected quantization MSE, for activations and weights."""

from edgeforge.quant.methods import Method, register_method


@register_method
class Mse(Method):
    name = "mse"
    summary = "MSE-optimal clipping (OMSE), activations and weights"
    observer = "mse"
    profile_name = "omse"

    def weight_params(self, w, bits, axis):
        from edgeforge.quant.observers import weight_params

        return weight_params(w, bits, "mse", axis)
