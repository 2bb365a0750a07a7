"""How a model was specified: what a fit's result keeps beside its problem.

A :class:`~jaxglmm.results.result.FitResult` holds the :class:`~jaxglmm.core.problem.Problem`
it was fitted on (structure, family, arrays, design) and this :class:`ModelSpec`: the formula,
the data and the model's arguments, from which a related model (a null model, a power
simulation's) is built the same way.  It holds no :class:`jaxglmm.Model`: refits go through
:func:`jaxglmm.model.fit_problem`.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .._lazy import pandas as pd


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """formula: the lme4/brms formula; data: the DataFrame it was applied to (not copied);
    data_name: how summaries name it; arguments: the model's other arguments (family, link,
    categorical, levels, weights, dpars), as ``Model(formula, data, **arguments)`` takes
    them."""

    formula: str
    data: pd.DataFrame
    data_name: str
    arguments: Mapping

    def __post_init__(self):
        object.__setattr__(self, "arguments", MappingProxyType(dict(self.arguments)))

    @property
    def weights(self) -> str | None:
        """The name of the prior-weights column, or None."""
        return self.arguments.get("weights")

    @property
    def dpars(self) -> dict:
        """Formulas of family parameters (brms's ``zi ~ ...``), by parameter."""
        return dict(self.arguments.get("dpars") or {})
