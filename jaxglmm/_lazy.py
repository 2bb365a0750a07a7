"""Modules loaded when first used, not when jaxglmm is imported.

``import jaxglmm`` costs at most what ``import jax`` costs and a little more (issue 24):
pandas (with pyarrow, about 0.3 s) and scipy (about 0.1 s) load on their first use, when a
design reads a data frame or a result is built.  ``from jaxglmm._lazy import pandas as pd``
gives a stand-in whose first attribute read imports the module; it is not put in
``sys.modules``, so nothing changes for the user's own imports.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class _Lazy(ModuleType):
    """A module imported on its first attribute read (then every read is the module's)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_module"] = None

    def _load(self) -> ModuleType:
        module = self.__dict__["_module"]
        if module is None:
            module = self.__dict__["_module"] = importlib.import_module(self.__name__)
        return module

    def __getattr__(self, attr: str):
        value = getattr(self._load(), attr)
        if not attr.startswith("__"):
            self.__dict__[attr] = value     # later reads of it are plain dictionary reads
        return value

    def __dir__(self):
        return dir(self._load())


pandas = _Lazy("pandas")
scipy_special = _Lazy("scipy.special")
scipy_lapack = _Lazy("scipy.linalg.lapack")

__all__ = ["pandas", "scipy_special", "scipy_lapack"]
