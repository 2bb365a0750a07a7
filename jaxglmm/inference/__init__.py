"""Inference after the fit, as free functions of a :class:`~jaxglmm.results.FitResult`
(as MixedModels.jl's ``parametricbootstrap(m)`` and ``profile(m)``): likelihood-ratio tests
(:func:`anova`), the parametric bootstrap, confidence intervals and profiles, power by
simulation, influence diagnostics, MAP prior sensitivity and the coefficient table with
denominator degrees of freedom; each batch of refits runs on :mod:`jaxglmm.many`.  It may
import every stage up to :mod:`jaxglmm.many`.  The same-named methods of ``FitResult`` call
these functions."""
from .anova import anova
from .bootstrap import Replicates, bootstrap
from .confint import confint
from .ddf import coef_table
from .implicit import FitArrays, fit_fn
from .influence import cooks_distance, hatvalues, influence, leave_one_out, sensitivity
from .power import power
from .power_curve import power_curve_class
from .profile import profile

__all__ = ["anova", "bootstrap", "coef_table", "confint", "power", "PowerCurve", "profile",
           "Replicates", "FitArrays", "fit_fn", "influence", "cooks_distance", "hatvalues",
           "leave_one_out", "sensitivity"]


def __getattr__(name: str):
    if name == "PowerCurve":        # a DataFrame subclass: pandas loads when it is asked for
        return power_curve_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
