"""Design stage: a parsed formula applied to data.

Model matrices and grouping factors (:mod:`.matrices`), the response coded for the family
and the assembled :class:`Design` (:mod:`.design`), several linear predictors for
categorical responses and correlated IDs (:mod:`.channels`), and formulas for a family's own
parameters (:mod:`.dpars`).  NumPy and pandas; no JAX programs.
"""
from .design import (Design, NewData, NewTerm, RandomTerm, build_design, check_identifiable,
                     identifiability_problem, single_level_problem)

__all__ = ["Design", "NewData", "NewTerm", "RandomTerm", "build_design",
           "check_identifiable", "identifiability_problem", "single_level_problem"]
