"""Model builders: `timm:<name>` for any timm model, `edgeforge:<name>` for ours.

Our families live one file each in this package (timm style) and register their constructors
with `@register_model`; every module here is imported on first lookup, so adding a family is
adding a file.
"""

from __future__ import annotations

from typing import Any, Callable

from edgeforge.registry import import_submodules

_REGISTRY: dict[str, Callable[..., Any]] = {}
_loaded = False


def register_model(fn: Callable[..., Any] | None = None, *, name: str | None = None):
    """Register a constructor `fn(**builder_args) -> nn.Module` under `edgeforge:<name>`."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"model {key!r} registered twice ({_REGISTRY[key].__module__} and {f.__module__})")
        _REGISTRY[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_submodules(__name__, __path__, skip=("layers",))


def edgeforge_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def validate_builder(builder: str) -> None:
    """Raise ValueError (with what is accepted) unless `builder` names a model we can build."""
    kind, sep, name = builder.partition(":")
    if not sep or not name:
        raise ValueError("builder must be 'timm:<model name>' or 'edgeforge:<model name>'")
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            import difflib

            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            raise ValueError(f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    elif kind == "edgeforge":
        known = edgeforge_models()
        if name not in known:
            raise ValueError(f"edgeforge has no model {name!r}; known: {', '.join(known) or '(none)'}")
    else:
        raise ValueError(f"unknown builder kind {kind!r}; accepted: 'timm:<name>', 'edgeforge:<name>'")


def build_model(builder: str, **kwargs: Any):
    """Build the model in eval mode, randomly initialised (callers seed torch first)."""
    validate_builder(builder)
    kind, _, name = builder.partition(":")
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, **kwargs)
    else:
        model = _REGISTRY[name](**kwargs)
    return model.eval()
