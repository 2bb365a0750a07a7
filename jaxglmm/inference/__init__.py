"""Inference after the fit: likelihood-ratio tests (:func:`anova`), the parametric
bootstrap and confidence intervals, each batch of refits run on :mod:`jaxglmm.many`.  It
may import every stage up to :mod:`jaxglmm.many`; it registers ``FitResult.bootstrap`` and
``FitResult.confint`` (:mod:`jaxglmm.results.extensions`)."""
from ..results.extensions import register
from .anova import anova
from .bootstrap import Replicates, bootstrap
from .confint import confint
from .ddf import coef_table
from .power import PowerCurve, power
from .implicit import FitArrays, fit_fn
from .influence import cooks_distance, hatvalues, influence, leave_one_out, sensitivity

register("bootstrap", bootstrap)
register("confint", confint)
register("coef_table", coef_table)
register("power", power)
for _name, _fn in (("fit_fn", fit_fn), ("influence", influence),
                   ("cooks_distance", cooks_distance), ("hatvalues", hatvalues),
                   ("leave_one_out", leave_one_out), ("sensitivity", sensitivity)):
    register(_name, _fn)

__all__ = ["anova", "bootstrap", "coef_table", "confint", "power", "PowerCurve", "Replicates",
           "FitArrays", "fit_fn", "influence", "cooks_distance", "hatvalues", "leave_one_out",
           "sensitivity"]
