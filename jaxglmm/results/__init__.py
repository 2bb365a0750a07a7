"""Results stage: the :class:`FitResult` record with prediction and simulation
(:mod:`.result`), the one builder from a raw fit (:mod:`.build`), variance components
(:mod:`.varcorr`) and lme4-style summaries (:mod:`.summary`)."""
from .result import FitResult

__all__ = ["FitResult"]
