"""Methods of :class:`~jaxglmm.results.FitResult` that later stages implement.

``fit.bootstrap`` and ``fit.confint`` run batches of fits (:mod:`jaxglmm.inference`, which
sits above this stage and imports it).  The result record names the methods and documents
them; the stage that implements one registers it here when it is imported (the package's
``__init__`` imports every stage), so the stages still import one way."""
from __future__ import annotations

from typing import Callable

_METHODS: dict[str, Callable] = {}


def register(name: str, fn: Callable) -> None:
    _METHODS[name] = fn


def call(name: str, *args, **kwargs):
    try:
        fn = _METHODS[name]
    except KeyError:
        raise RuntimeError(f"fit.{name}() is implemented by jaxglmm.inference, which is not "
                           "loaded; import jaxglmm (the package) rather than a submodule "
                           "alone") from None
    return fn(*args, **kwargs)
