"""lme4's checks of a design: identifiable random effects (checkNlevels, checkZdims), a
grouping factor with more than one level, and predictors on comparable scales (checkScaleX).
NumPy only; the messages are lme4's."""
from __future__ import annotations

import re

import numpy as np

from ..families import Family

__all__ = ["check_identifiable", "identifiability_problem", "re_term_sizes",
           "single_level_problem", "scale_message"]


def check_identifiable(design, family: Family) -> None:
    """lme4's checkNlevels and checkZdims (lFormula/glFormula), with lme4's messages: a
    :class:`~jaxglmm.Model` refuses a design whose random effects cannot be told apart from
    the residual (``build_design`` itself builds any design, for inspection).

    With a residual variance (lmer, ``allow.n = FALSE``) a grouping factor needs fewer
    levels than observations and a term fewer random effects (levels x columns) than
    observations, else the random effects and the residual variance are confounded.  Other
    families (glmer, ``allow.n = TRUE``) refuse only more levels, or more random effects,
    than observations.  ``n`` is the number of rows of the design (after dropping rows with
    missing values); terms are in lme4's order.
    """
    terms = [(t.factor.name, len(t.factor.levels), t.matrix.values.shape[1], t.source)
             for t in design.spec.terms]
    problem = identifiability_problem(design.nobs, terms, family.residual is not None)
    if problem:
        raise ValueError(problem)


def re_term_sizes(design) -> list[list[tuple[str, int, str]]]:
    """Per formula of a model's design (the main formula, then a parameter formula's), each
    random term's (grouping factor, number of columns, the term as written) in lme4's order:
    what lme4's identifiability checks read (``fit_many`` checks each dataset with
    :func:`identifiability_problem`)."""
    return [[(t.factor.name, t.matrix.values.shape[1], t.source) for t in part.spec.terms]
            for part in (design.parts or (design,))]


def single_level_problem(factor: str, source: str, level: str) -> str:
    """Why a grouping factor with one level cannot carry a random effect (lme4: "grouping
    factors must have > 1 sampled level")."""
    return (f"grouping factor {factor!r} in {source} has a single level ({level!r}); a "
            "random effect needs at least two levels")


def identifiability_problem(n: int, terms, strict: bool) -> str | None:
    """lme4's checkNlevels and checkZdims message for ``n`` observations and ``terms``,
    each ``(factor name, number of levels, number of columns, the bar term as written)`` in
    lme4's order, or None when the random effects are identifiable.  ``strict``: the family
    has a residual variance (lmer's rules; glmer's otherwise).  Used for a model
    (:func:`check_identifiable`) and for each dataset of ``fit_many``."""
    too_many = (lambda m: m >= n) if strict else (lambda m: m > n)
    problems = list(dict.fromkeys(name for name, levels, _, _ in terms if too_many(levels)))
    if problems:
        return ("number of levels of each grouping factor must be "
                f"{'<' if strict else '<='} number of observations "
                f"(problems: {', '.join(problems)})")
    for name, levels, q, source in terms:
        n_re = levels * q
        if n <= n_re if strict else n < n_re:
            rest = " and the residual variance (or scale parameter)" if strict else ""
            return (f"number of observations (={n}) {'<=' if strict else '<'} number "
                    f"of random effects (={n_re}) for term ({_bar_text(source)}); "
                    f"the random-effects parameters{rest} are probably unidentifiable")
    return None


def _bar_text(source: str) -> str:
    """A random term as R deparses it, without its parentheses: ``1 + x | g``."""
    text = re.sub(r"\s+", "", source[1:-1] if source.startswith("(") else source)
    return re.sub(r"\|\||\||\+|(?<=[\w).])-|\*|/", lambda m: f" {m.group()} ", text)


SCALE_RATIO = 1e3      # lme4's checkScaleX tolerance


def scale_message(X: np.ndarray) -> str | None:
    """lme4's ``check.scaleX``: a warning when the non-binary predictors' SDs differ by more
    than a factor 1e3 from each other or from 1."""
    X = np.asarray(X, float)
    cont = [j for j in range(X.shape[1]) if not np.all(np.isin(X[:, j], (0.0, 1.0)))]
    if not cont or X.shape[0] < 2:
        return None
    with np.errstate(divide="ignore"):
        logsd = np.log(np.std(X[:, cont], axis=0, ddof=1))
    spread = np.abs(logsd[:, None] - logsd[None, :])
    if np.any(np.abs(logsd) > np.log(SCALE_RATIO)) or np.any(spread > np.log(SCALE_RATIO)):
        return "Some predictor variables are on very different scales: consider rescaling"
    return None
