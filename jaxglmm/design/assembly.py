"""A model's design: its formulas applied to the data, checked, and assembled into one design.

lme4's ``lFormula``/``glFormula`` stage.  :func:`model_design` builds the main formula's design
(and a family parameter's, brms's ``zi ~ ...``), checks the random effects are identifiable
as lme4 does, and :func:`assemble` makes one :class:`~.design.Design` of one or several
linear predictors (:mod:`.channels`).  The assembled design keeps the designs it was made
from (``Design.parts``): new data are rebuilt the same way (:mod:`.newdata`) and lme4's
``re.form`` is read against the model's terms (:mod:`.selection`).
"""
from __future__ import annotations

from dataclasses import replace

from .._lazy import pandas as pd

from ..families import Family
from . import channels
from . import dpars as dpar_mod
from .checks import check_identifiable
from .design import Design, build_design

__all__ = ["assemble", "column_list", "model_design"]


def model_design(formula: str, data: pd.DataFrame, family: Family, *, categorical=(),
                 levels: dict | None = None, weights: str | None = None,
                 dpars: dict | None = None) -> tuple[Design, Family]:
    """The assembled design of a model (see :class:`jaxglmm.Model` for the arguments) and
    the model's family: with a parameter formula, the family reads that parameter from
    linear predictor 1 (:func:`.dpars.with_dpar_predictor`).

    Raises ValueError (or :class:`~jaxglmm.formula.FormulaError`) for data the model cannot
    take: see :func:`.design.build_design`, :func:`.checks.check_identifiable` and the
    family's ``validate``."""
    categorical = column_list(categorical, "categorical")
    dpars = dict(dpars or {})
    dpar_mod.check_dpars(family, dpars)
    dpar = next(iter(dpars), None)

    def build(f: str, d: pd.DataFrame) -> Design:
        return build_design(f, d, family, categorical=categorical, levels=levels,
                            weights=weights)

    if dpar is None:
        parts = (build(formula, data),)
    else:
        extra_formula = dpar_mod.dpar_formula(formula, dpar, dpars[dpar])
        data, n_na = dpar_mod.complete_rows(data, [formula, extra_formula])
        main = build(formula, data)
        if n_na:
            main = replace(main, n_dropped=n_na, messages=(
                f"{n_na} rows with missing values in used columns were dropped",))
        parts = (main, build(extra_formula, data))
    family.validate(parts[0].y, parts[0].trials)
    for part in parts:
        check_identifiable(part, family)
    n_categories = 1 if dpar else channels.n_categories(family, parts[0])
    design = assemble(parts, dpar, n_categories)
    return design, (dpar_mod.with_dpar_predictor(family, dpar) if dpar else family)


def assemble(parts: tuple[Design, ...], dpar: str | None = None,
             n_categories: int = 1) -> Design:
    """One design from the designs of a model's formulas: a parameter formula's design as
    linear predictor 1 (``dpar``), or with ``n_categories`` > 1 a copy of every column
    and term per non-reference category; terms sharing a correlation ID merged.  The same
    steps assemble the training data and new data."""
    main = parts[0]
    if len(parts) > 1:
        design = dpar_mod.combine(main, parts[1], dpar)
    elif n_categories > 1:
        design = channels.expand_categories(main, main.response_levels[1:])
    else:
        design = main
    return replace(design, terms=channels.merge_ids(design.terms), parts=tuple(parts),
                   dpar=dpar)


def column_list(value, option: str) -> tuple:
    """A model option naming columns (``categorical``) as a tuple: None means none, and
    one name (a string) is that one column, not its letters."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset, pd.Index)):
        return tuple(value)
    raise TypeError(f"{option} must be a column name or a list of column names, got "
                    f"{value!r}")
