"""``fit.summary()``: a data object, and its lme4-style rendering."""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass

import numpy as np
from .._lazy import pandas as pd
from .._lazy import scipy_special

from ..methods import get_method


class _Rendered:
    """Display shared by the summaries: ``str()`` renders, IPython shows the same text."""

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))

    @staticmethod
    def _close(out: list, messages) -> str:
        if messages:
            out.append("")
            out.extend(messages)
        return "\n".join(out)


@dataclass(frozen=True)
class Summary(_Rendered):
    """The pieces of lme4's printed summary, as data.  ``str(summary)`` renders them."""

    title: str
    formula: str
    family: str
    link: str
    response_note: str | None
    criteria: pd.Series
    random: pd.DataFrame
    nobs: int
    groups: pd.Series
    coefficients: pd.DataFrame
    family_params: dict
    messages: tuple
    family_params_se: dict = dataclasses.field(default_factory=dict)
    data: str | None = None
    residuals: pd.Series | None = None
    correlation: pd.DataFrame | None = None

    @classmethod
    def from_fit(cls, fit, correlation: bool = True, ddf: str | None = None):
        """``correlation=False`` leaves out the correlation of the fixed effects, as
        lme4's ``print(summary(fit), correlation = FALSE)``; ``ddf`` (LMMs) gives the
        fixed-effects table lmerTest's denominator df and p-values (:meth:`coef_table`)."""
        if fit.posterior_summary is not None:
            if ddf is not None:
                raise ValueError("ddf is for likelihood fits of linear mixed models")
            return BayesSummary.from_fit(fit)
        design = fit.problem.design
        spec = get_method(fit.method)
        title = spec.heading(fit.problem.family.exact_lmm, fit.options)
        if spec.reml:
            crit = pd.Series({"REML criterion": -2 * fit.loglik})
        else:
            crit = pd.Series({"AIC": fit.aic, "BIC": fit.bic, "logLik": fit.loglik,
                              "deviance": -2 * fit.loglik, "df.resid": fit.nobs - fit.df})
        vc = fit.varcorr
        est = fit.fixef
        se = fit.fixef_se
        z = est / se
        coef = pd.DataFrame({"Estimate": est, "Std. Error": se})
        if ddf is not None:         # lmerTest's table (jaxglmm.inference.ddf)
            coef = fit.coef_table(ddf=ddf)
            title += (f". t-tests use {DDF_TITLES.get(str(ddf).lower(), ddf)} method")
        elif fit.problem.family.residual is not None:     # an estimated residual scale: t
            coef["t value"] = z
        else:
            coef["z value"] = z
            coef["Pr(>|z|)"] = 2 * scipy_special.ndtr(-np.abs(z.to_numpy()))     # host: no compile
        groups = pd.Series({t.group: t.n_levels for t in design.terms})
        note = None
        if design.response_levels is not None and fit.problem.family.response == "binary":
            note = (f"response '{design.response_name}': modelling P({design.response_levels[1]!r})"
                    f" against {design.response_levels[0]!r}")
        formula = fit.spec.formula
        for name, text in fit.spec.dpars.items():
            formula += f"\n         {name} ~ {text.split('~', 1)[-1].strip()}"
        resid = fit._pearson_residuals()
        quartiles = None if resid is None else pd.Series(
            np.quantile(resid, [0, 0.25, 0.5, 0.75, 1]), index=["Min", "1Q", "Median", "3Q", "Max"])
        cor = None
        if correlation and len(est) > 1:
            cov = fit.vcov()
            v = cov.to_numpy(float)
            d = np.sqrt(np.diag(v))
            cor = pd.DataFrame(v / np.outer(d, d), index=cov.index, columns=cov.columns)
        return cls(title, formula, fit.family, fit.link, note, crit, vc, fit.nobs,
                   groups, coef, dict(fit.family_params), tuple(fit.messages),
                   dict(fit.family_params_se), fit.spec.data_name, quartiles, cor)

    def __str__(self) -> str:
        out = [self.title]
        if self.family != "gaussian" or self.link != "identity":
            out.append(f" Family: {self.family}  ( {self.link} )")
        out.append(f"Formula: {self.formula}")
        if self.data:
            out.append(f"   Data: {self.data}")
        if self.response_note:
            out.append(self.response_note)
        out.append("")
        if list(self.criteria.index) == ["REML criterion"]:
            out.append(f"REML criterion at convergence: {self.criteria.iloc[0]:.1f}")
        else:
            out.append(_criteria(self.criteria))
        if self.residuals is not None:
            out.append("")
            out.append("Scaled residuals: ")
            cells = [f"{v:.4f}" for v in self.residuals]
            w = max(max(len(c) for c in cells), max(len(k) for k in self.residuals.index)) + 1
            out.append("".join(k.rjust(w) for k in self.residuals.index))
            out.append("".join(c.rjust(w) for c in cells))
        out.append("")
        out.append("Random effects:")
        out.append(_render_random(self.random))
        grp = "; ".join(f"{k}, {v}" for k, v in self.groups.items())
        out.append(f"Number of obs: {self.nobs}, groups:  {grp}")
        if self.family_params:
            out.append("")
            out.append("Family parameters:")
            for k, v in self.family_params.items():
                vals = np.atleast_1d(np.asarray(v, float))
                line = f"  {k}: " + " ".join(f"{x:.4g}" for x in vals)
                if k in self.family_params_se:
                    ses = np.atleast_1d(np.asarray(self.family_params_se[k], float))
                    line += "  (Std. Error " + " ".join(f"{x:.4g}" for x in ses) + ")"
                out.append(line)
        out.append("")
        out.append("Fixed effects:")
        out.append(_coef_table(self.coefficients))
        if self.correlation is not None:
            out.append("")
            out.extend(_correlation_block(self.correlation))
        return self._close(out, self.messages)


DDF_TITLES = {"satterthwaite": "Satterthwaite's", "kenward-roger": "Kenward-Roger's"}
MAX_CORRELATION_P = 12     # lme4 prints the correlation of fixed effects up to p = 12


def _correlation_block(cor: pd.DataFrame) -> list[str]:
    """lme4's "Correlation of Fixed Effects": the lower triangle, three decimals, columns
    headed by abbreviated names (all but the last)."""
    p = cor.shape[0]
    if p > MAX_CORRELATION_P:
        return [f"Correlation matrix not shown by default, as p = {p} > {MAX_CORRELATION_P}.",
                "Use fit.vcov() to see it."]
    names = [str(n) for n in cor.index]
    heads = [_abbreviate(n) for n in names[:-1]]
    cells = [[f"{cor.iloc[i, j]:.3f}" for j in range(i)] for i in range(1, p)]
    width = max(6, *(len(h) for h in heads), *(len(c) for row in cells for c in row))
    wn = max(len(n) for n in names[1:])
    lines = ["Correlation of Fixed Effects:", " " * wn + " " + " ".join(h.rjust(width) for h in heads)]
    for i, row in enumerate(cells, start=1):
        lines.append(names[i].ljust(wn) + " " + " ".join(c.rjust(width) for c in row))
    return lines


def _abbreviate(name: str, length: int = 6) -> str:
    """A short column head, as R's abbreviate(): the name itself when short, else its
    first letter and consonants, then letters, up to ``length``."""
    clean = "".join(ch for ch in name if ch.isalnum())
    if len(clean) <= length:
        return clean or name[:length]
    keep = clean[0] + "".join(ch for ch in clean[1:] if ch.lower() not in "aeiou")
    return (keep if len(keep) >= length else clean)[:length]


def _criteria(crit: pd.Series) -> str:
    """lme4's row of AIC, BIC, logLik, deviance, df.resid (one decimal, df.resid whole)."""
    cells = [f"{v:.0f}" if k == "df.resid" else f"{v:.1f}" for k, v in crit.items()]
    width = max(max(len(c) for c in cells), max(len(k) for k in crit.index)) + 1
    return "\n".join(["".join(k.rjust(width) for k in crit.index),
                      "".join(c.rjust(width) for c in cells)])


def _decimals(values) -> int:
    """Decimals so that a column's largest entry shows about six significant digits."""
    v = np.abs(np.asarray(values, float))
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return 3
    return int(np.clip(5 - np.floor(np.log10(v.max())), 1, 4))


def _pvalue(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "<2e-16" if p < 2e-16 else (f"{p:.3g}" if p >= 1e-4 else f"{p:.2e}")


def _coef_table(coef: pd.DataFrame) -> str:
    """The fixed-effect table, each column with one number of decimals (as lme4)."""
    cols = {}
    for c in coef.columns:
        if c.startswith("Pr("):
            cols[c] = [_pvalue(v) for v in coef[c]]
        else:
            d = _decimals(coef[c])
            cols[c] = [f"{v:.{d}f}" for v in coef[c]]
    names = [str(i) for i in coef.index]
    wn = max(len(n) for n in names)
    widths = {c: max(len(c), *(len(x) for x in cols[c])) for c in cols}
    lines = [" " * wn + " " + " ".join(c.rjust(widths[c]) for c in cols)]
    for k, n in enumerate(names):
        lines.append(n.ljust(wn) + " " + " ".join(cols[c][k].rjust(widths[c]) for c in cols))
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (int, np.integer)):
        return str(v)
    v = float(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:.3e}"
    return f"{v:.4g}" if abs(v) < 1 else f"{v:.{max(1, 6 - len(str(int(abs(v)))))}f}".rstrip("0").rstrip(".")


def _table(df: pd.DataFrame, index: bool = True) -> str:
    cols = list(df.columns)
    rows = [[str(i) if index else "" for i in df.index]] if index else []
    body = [[_fmt(v) for v in df[c]] for c in cols]
    header = ([""] if index else []) + [str(c) for c in cols]
    columns = (rows + body)
    widths = [max(len(h), *(len(x) for x in col)) if len(col) else len(h)
              for h, col in zip(header, columns)]
    lines = [" ".join(h.rjust(w) if k else h.ljust(w) for k, (h, w) in enumerate(zip(header, widths)))]
    for r in range(len(df)):
        cells = [col[r] for col in columns]
        lines.append(" ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def _render_random(vc: pd.DataFrame) -> str:
    lines = [f" {'Groups':<10} {'Name':<16} {'Variance':>10} {'Std.Dev.':>10}  Corr"]
    for group, block in vc.groupby("group", sort=False):
        sds = block[block.var2.isna()]
        cors = block[block.var2.notna()]
        names = list(sds.var1)
        for k, r in enumerate(sds.itertuples(index=False)):
            name = r.var1 if isinstance(r.var1, str) else ""
            corr = []
            for j in range(k):
                hit = cors[(cors.var1 == names[j]) & (cors.var2 == r.var1)]
                corr.append(f"{hit.sd_or_cor.iloc[0]:5.2f}" if len(hit) else "")
            g = group if k == 0 else ""
            lines.append(f" {g:<10} {name:<16} {r.vcov:>10.4g} {r.sd_or_cor:>10.4g}  {' '.join(corr)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class BayesSummary(_Rendered):
    """brms-style summary of a Bayesian fit, as data; ``str()`` renders it."""

    title: str
    formula: str
    family: str
    link: str
    nobs: int
    groups: pd.Series
    priors: tuple
    table: pd.DataFrame
    diagnostics: dict
    messages: tuple

    @classmethod
    def from_fit(cls, fit) -> "BayesSummary":
        groups = pd.Series({t.group: t.n_levels for t in fit.problem.design.terms})
        return cls(get_method(fit.method).title, fit.spec.formula, fit.family, fit.link, fit.nobs,
                   groups, tuple(fit.priors), fit.posterior_summary,
                   {k: v for k, v in fit.diagnostics.items() if np.isscalar(v) or isinstance(v, str)},
                   tuple(fit.messages))

    def __str__(self) -> str:
        out = [self.title, f" Family: {self.family}  ( {self.link} )", f"Formula: {self.formula}"]
        grp = "; ".join(f"{k}, {v}" for k, v in self.groups.items())
        out.append(f"Number of obs: {self.nobs}, groups:  {grp}")
        out.append("")
        out.append("Priors:")
        out.extend(f"  {p}" for p in self.priors)
        out.append("")
        out.append("Posterior:")
        out.append(_table(self.table))
        if self.diagnostics:
            out.append("")
            out.append("Diagnostics: " + ", ".join(
                f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                for k, v in self.diagnostics.items()))
        return self._close(out, self.messages)
