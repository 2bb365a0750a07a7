"""Batch stage: one model fitted to many same-shape datasets in one compiled, vmapped call."""
from .batch import ManyFits, fit_many, refit_many

__all__ = ["ManyFits", "fit_many", "refit_many"]
