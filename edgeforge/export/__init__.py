"""Export: deploy transforms, torch -> ONNX, graph passes, parity check."""

from __future__ import annotations

from typing import Any


def export_recipe(*args: Any, **kwargs: Any):
    """See `edgeforge.export.pipeline.export_recipe`."""
    from edgeforge.export.pipeline import export_recipe as _impl

    return _impl(*args, **kwargs)
