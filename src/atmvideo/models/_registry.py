"""One registry for atmvideo models, mirrored into timm's so ``timm.create_model`` finds them too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from timm.models import register_model

from atmvideo.models._base import VideoClassifier

_ENTRYPOINTS: dict[str, Callable[..., VideoClassifier]] = {}

Entrypoint = TypeVar("Entrypoint", bound=Callable[..., Any])


def register_video_model(fn: Entrypoint) -> Entrypoint:
    """Register a model entry point under its function name in atmvideo's and timm's registries."""
    _ENTRYPOINTS[fn.__name__] = fn
    register_model(fn)
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered atmvideo models that match a shell-style pattern."""
    import fnmatch

    return sorted(name for name in _ENTRYPOINTS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **kwargs: Any) -> VideoClassifier:
    """Build a registered atmvideo model by name (same keyword arguments as the entry point)."""
    try:
        entrypoint = _ENTRYPOINTS[name]
    except KeyError:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
    return entrypoint(**kwargs)
