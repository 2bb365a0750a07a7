"""jaxglmm: generalized linear mixed models in JAX.

The public API is listed here; everything else is internal.

Pipeline: formula -> design (:func:`build_design`) -> log-density (:meth:`Model.log_density`)
-> fit (:meth:`Model.fit`) -> result (:class:`FitResult`).
"""
import jax as _jax

# REML, Laplace and Cholesky work need float64 (see README, "Precision").
_jax.config.update("jax_enable_x64", True)

from .datasets import list_datasets, load_dataset, read_table  # noqa: E402
from .design import Design, RandomTerm, build_design  # noqa: E402
from .families import Family, get_family, register_family  # noqa: E402
from .formula import FormulaError  # noqa: E402
from .many import ManyFits, fit_many, refit_many  # noqa: E402
from .model import Model, fit  # noqa: E402
from .result import FitResult  # noqa: E402
from .cache import clear_caches, enable_compilation_cache  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Model", "fit", "fit_many", "refit_many", "FitResult", "ManyFits", "Design", "RandomTerm",
    "build_design", "Family", "get_family", "register_family", "FormulaError",
    "load_dataset", "list_datasets", "read_table", "enable_compilation_cache", "clear_caches", "__version__",
]
