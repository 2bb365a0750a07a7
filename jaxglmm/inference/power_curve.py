"""The table :func:`jaxglmm.power` returns: a pandas DataFrame subclass, made when first asked
for (:func:`power_curve_class`), so that pandas loads when a power curve is first made, not
when jaxglmm is imported (``import jaxglmm`` at 1.13x ``import jax``, issue 24)."""
from __future__ import annotations

from functools import cache

from .._lazy import pandas as pd


@cache
def power_curve_class() -> type:
    """The ``PowerCurve`` class (one class object per process)."""
    class PowerCurve(pd.DataFrame):
        """The power table (size, power, lower, upper, nsim); ``.plot()`` draws the curve."""

        @property
        def _constructor(self):
            return PowerCurve

        def plot(self, ax=None, **kwargs):
            """The power curve with its confidence band (matplotlib, ``jaxglmm[plots]``)."""
            import matplotlib.pyplot as plt
            if ax is None:
                _, ax = plt.subplots()
            x = self["size"].to_numpy(float)
            ax.plot(x, self["power"], marker="o", **kwargs)
            ax.fill_between(x, self["lower"], self["upper"], alpha=0.2)
            ax.set_xlabel(self.attrs.get("along") or "observations")
            ax.set_ylabel("power")
            ax.set_ylim(0, 1)
            return ax.figure
    PowerCurve.__qualname__ = "PowerCurve"
    return PowerCurve


def __getattr__(name: str):
    if name == "PowerCurve":        # as an attribute (and for pickle)
        return power_curve_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PowerCurve", "power_curve_class"]
