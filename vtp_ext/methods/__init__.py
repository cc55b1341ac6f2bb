"""Token-reduction methods behind one call shape.

    method = vtp_ext.methods.get("saliency")
    red = method(tower, images, budget=0.25)        # -> vtp_ext.nn.Reduction

``tower`` is a :class:`vtp_ext.nn.VisionTower`; ``budget`` a float or a tensor ``[B]`` of fractions of the
patch tokens (K = clamp(floor(b N), 1, N) patches plus CLS); ``question`` (``[B, Lq, C]`` embeddings) and
``question_text`` (list of str) are passed to the methods that read them (``pyramid`` PTP variant,
``difficulty``). LLM-side methods (``fastv``, ``pyramiddrop``) return all vision tokens and a
``lm_pruner`` that the language model calls between its layers (see :mod:`vtp_ext.models`).
"""
from __future__ import annotations

from typing import Callable, Dict, List

from .base import Method, VisionInputs

_REGISTRY: Dict[str, Callable[..., Method]] = {}


def register(name: str):
    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"vtp_ext.methods: {name!r} is already registered")
        _REGISTRY[name] = factory
        factory.method_name = name
        return factory
    return deco


def available() -> List[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def get(name: str, **config) -> Method:
    """Build method ``name`` with its keyword configuration."""
    if name not in _REGISTRY:
        raise KeyError(f"vtp_ext.methods.get: unknown method {name!r}; available: {', '.join(available())}")
    method = _REGISTRY[name](**config)
    method.name = name
    return method


from . import vision, lm, difficulty  # noqa: E402,F401  (register the methods)

__all__ = ["Method", "VisionInputs", "available", "get", "register"]
