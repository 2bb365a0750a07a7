"""jaxglmm: generalized linear mixed models in JAX.

The public API is listed here; everything else is internal.

Pipeline, one subpackage per stage (see docs/architecture.md): ``formula`` (strings) ->
``design`` (data, :func:`build_design`) -> ``core`` (the JAX log-density,
:meth:`Model.log_density`) -> ``fit`` / ``bayes`` (:meth:`Model.fit`) -> ``results``
(:class:`FitResult`), with ``many`` for batches, ``inference`` (free functions of a fit:
:func:`confint`, :func:`bootstrap`, :func:`profile`...) and ``io`` and ``cli`` around them.
"""
import jax as _jax

# REML, Laplace and Cholesky work need float64 (see README, "Precision").
_jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from .design import Design, RandomTerm, build_design  # noqa: E402
from .families import Family, get_family, register_family  # noqa: E402
from .fit.cache import (clear_caches, default_compilation_cache,  # noqa: E402
                        enable_compilation_cache)
from .fit.convergence import ConvergenceWarning  # noqa: E402
from .formula import FormulaError  # noqa: E402
from .inference import (anova, bootstrap, coef_table, confint, cooks_distance,  # noqa: E402
                        hatvalues, influence, leave_one_out, power, profile, sensitivity)
from .io.datasets import list_datasets, load_dataset, read_table  # noqa: E402
from .many import ManyFits, fit_many, refit_many  # noqa: E402
from .model import Model, fit  # noqa: E402
from .results import FitResult  # noqa: E402

# Compiled programs persist on disk (~/.cache/jaxglmm/xla, or JAXGLMM_CACHE_DIR;
# JAXGLMM_NO_CACHE=1 turns it off): a new process loads them instead of compiling.
default_compilation_cache()

__all__ = [
    "Model", "fit", "fit_many", "refit_many", "FitResult", "ManyFits", "Design", "RandomTerm",
    "build_design", "Family", "get_family", "register_family", "FormulaError",
    "load_dataset", "list_datasets", "read_table", "enable_compilation_cache", "clear_caches",
    "ConvergenceWarning", "anova", "bootstrap", "coef_table", "confint", "cooks_distance",
    "hatvalues", "influence", "leave_one_out", "power", "profile", "sensitivity", "__version__",
]
