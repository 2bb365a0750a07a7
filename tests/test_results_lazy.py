"""A fit's pandas fields (fixef, fixef_se, fixef_vcov, varcorr, ranef) are built on first
read (jaxglmm.core.lazy) and kept: built, they are what the eager builder gave (values,
index, columns), the same object on every read, and a copy, a pickle or
``dataclasses.replace`` of the result holds them built."""
import copy
import dataclasses

import cloudpickle
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
import jaxglmm.model as model_module
from jaxglmm.core.lazy import Deferred
from jaxglmm.results.result import LAZY_FIELDS
from jaxglmm.results.varcorr import varcorr_frame

CASES = {
    "lmm": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", "gaussian", "reml"),
    "glmm": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial",
             "laplace"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def fitted(request):
    """A fresh fit (no field read yet) and the raw fit it was built from."""
    formula, data, family, method = CASES[request.param]
    seen = {}
    build = model_module.likelihood_result

    def keep(*args):
        seen["raw"] = args[4]
        return build(*args)

    model_module.likelihood_result = keep
    try:
        fit = jg.Model(formula, jg.load_dataset(data), family).fit(method)
    finally:
        model_module.likelihood_result = build
    return request.param, fit, seen["raw"]


def _expected(kind, fit, raw) -> dict:
    """The fields as the eager builder made them, from the raw fit."""
    names = list(fit.problem.design.fixef_names)
    vcov = np.asarray(raw.vcov)
    ranef = {}
    sd = [np.sqrt(np.clip(np.diagonal(np.asarray(c), axis1=1, axis2=2), 0, None))
          for c in raw.b_cov]
    blocks = {(t.label, t.names): (k, t.col0) for k, f in enumerate(fit.problem.structure.factors)
              for t in f.terms}
    for t in fit.problem.design.terms:
        k, c0 = blocks[(t.label, tuple(t.names))]
        frame = ranef.setdefault(t.group, pd.DataFrame(index=pd.Index(t.levels, name="level")))
        for j, name in enumerate(t.names):
            frame[name] = np.asarray(raw.b[k])[:, c0 + j]
            frame[f"{name}_sd"] = sd[k][:, c0 + j]
    return {
        "fixef": pd.Series(np.asarray(raw.beta, float), index=names, name="fixef"),
        "fixef_se": pd.Series(np.sqrt(np.diag(vcov)), index=names, name="fixef_se"),
        "fixef_vcov": pd.DataFrame(vcov, index=names, columns=names),
        "varcorr": varcorr_frame(fit.problem.structure, fit.theta,
                                 float(raw.sigma) if kind == "lmm" else None),
        "ranef": ranef,
    }


def _assert_same(got, want):
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _assert_same(got[k], want[k])
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want, check_exact=True)
    else:
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_fields_are_built_on_first_read_as_the_eager_builder_gave_them(fitted):
    kind, fit, raw = fitted
    assert all(type(fit.__dict__[name]) is Deferred for name in LAZY_FIELDS)
    want = _expected(kind, fit, raw)
    for name in LAZY_FIELDS:
        first = getattr(fit, name)
        _assert_same(first, want[name])
        assert getattr(fit, name) is first            # built once, kept
    assert list(fit.varcorr.columns) == ["group", "var1", "var2", "vcov", "sd_or_cor"]
    assert fit.varcorr["var2"].iloc[0] is None        # lme4's NA, not NaN
    # the per-term blocks of b are the ranef frames' columns
    group = fit.problem.design.terms[0].group
    np.testing.assert_array_equal(fit.b[0][:, 0], fit.ranef[group].iloc[:, 0].to_numpy())


def test_lme4_values(fitted):
    kind, fit, _ = fitted
    if kind == "lmm":       # lme4: fixef(fm1), sqrt(diag(vcov(fm1)))
        np.testing.assert_allclose(fit.fixef, [251.405105, 10.467286], rtol=1e-6)
        np.testing.assert_allclose(fit.fixef_se, [6.824597, 1.545790], rtol=1e-5)
    else:                   # lme4: fixef(gm1)
        np.testing.assert_allclose(fit.fixef, [-1.3983, -0.9919, -1.1282, -1.5797], atol=1e-3)
    assert fit.summary() is not None and fit.to_dict()["fixef"]


def test_copies_pickles_and_replace_hold_the_built_fields(fitted):
    kind, fit, raw = fitted
    fresh = model_module.likelihood_result(fit.spec, fit.problem, fit.method, fit.options, raw,
                                           fit.seconds)
    assert type(fresh.__dict__["ranef"]) is Deferred
    clone = copy.copy(fresh)
    assert all(type(fresh.__dict__[n]) is not Deferred for n in LAZY_FIELDS)
    back = cloudpickle.loads(cloudpickle.dumps(fresh))
    moved = dataclasses.replace(model_module.likelihood_result(
        fit.spec, fit.problem, fit.method, fit.options, raw, fit.seconds), method=fit.method)
    want = _expected(kind, fit, raw)
    for other in (clone, back, moved):
        for name in LAZY_FIELDS:
            _assert_same(getattr(other, name), want[name])
    with pytest.raises(dataclasses.FrozenInstanceError):
        fresh.fixef = fresh.fixef
