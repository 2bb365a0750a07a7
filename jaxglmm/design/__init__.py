"""Design stage: a parsed formula applied to data.

Model matrices and grouping factors (:mod:`.matrices`), the response coded for the family
(:mod:`.response`), the :class:`Design` record and :func:`build_design` (:mod:`.design`),
lme4's checks (:mod:`.checks`), several linear predictors for categorical responses and
correlated IDs (:mod:`.channels`), formulas for a family's own parameters (:mod:`.dpars`), a
model's assembled design (:mod:`.assembly`), new data in it (:mod:`.newdata`) and lme4's
``re.form`` (:mod:`.selection`).  NumPy and pandas; no JAX programs.
"""
from .assembly import assemble, column_list, model_design
from .checks import (check_identifiable, identifiability_problem, re_term_sizes, scale_message,
                     single_level_problem)
from .design import Design, NewData, NewTerm, RandomTerm, build_design
from .newdata import group_labels, new_design, used_columns
from .selection import re_masks, re_selection, re_terms

__all__ = ["Design", "NewData", "NewTerm", "RandomTerm", "assemble", "build_design",
           "check_identifiable", "column_list", "group_labels", "identifiability_problem",
           "model_design", "new_design", "re_masks", "re_selection", "re_term_sizes",
           "re_terms", "scale_message", "single_level_problem", "used_columns"]
