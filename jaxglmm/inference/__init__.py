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

register("bootstrap", bootstrap)
register("confint", confint)
register("coef_table", coef_table)
register("power", power)

__all__ = ["anova", "bootstrap", "coef_table", "confint", "power", "PowerCurve", "Replicates"]
