"""What a :class:`~jaxglmm.results.result.FitResult` reads from the model it came from.

``FitResult.model`` is a :class:`jaxglmm.Model`; results sit below ``model.py`` and may not
import it, so :class:`FittedModel` lists the members that results and inference use.
"""
from __future__ import annotations

from typing import Any, Protocol

import pandas as pd

from ..core.problem import Problem, ProblemArrays
from ..core.restructure import ReStructure
from ..design import Design
from ..families import Family


class FittedModel(Protocol):
    """The members of :class:`jaxglmm.Model` a fit's result and inference read."""

    formula: str
    data: pd.DataFrame
    data_name: str
    options: dict            # how to build a related model the same way (power, null models)
    dpars: dict
    weights: str | None
    family: Family
    problem: Problem

    @property
    def design(self) -> Design: ...

    @property
    def structure(self) -> ReStructure: ...

    @property
    def arrays(self) -> ProblemArrays: ...

    def default_method(self) -> str: ...

    def fit(self, method: str | None = None, **options) -> Any: ...

    def fit_fn(self, method: str | None = None, **options) -> Any: ...

    def with_response(self, y) -> FittedModel: ...
