"""The batch engine: fit_many(by=), lists and folders through one design pass, buckets,
compaction, refit_many's starts, the tidy table, per-dataset verdicts and program reuse."""
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.fit import cache

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep_fit():
    model = jg.Model(SLEEP, jg.load_dataset("sleepstudy"))
    return model, model.fit()


def _long(fit, n, seed):
    data = jg.load_dataset("sleepstudy")
    Y = fit.simulate(n, seed=seed, re_form=None).to_numpy().T
    return pd.concat([data.assign(Reaction=Y[i], sim=f"s{i}") for i in range(n)],
                     ignore_index=True), Y


def _alone(frame):
    return jg.fit(SLEEP, frame.drop(columns="sim").reset_index(drop=True))


def test_by_equals_each_dataset_fitted_alone(sleep_fit):
    _, fit = sleep_fit
    long, _ = _long(fit, 6, seed=3)
    fits = jg.fit_many(SLEEP, long, by="sim", progress=False)
    assert list(fits.fixef.index) == [f"s{i}" for i in range(6)]
    for i in (0, 3, 5):
        alone = _alone(long[long.sim == f"s{i}"])
        np.testing.assert_allclose(fits.fixef.iloc[i], alone.fixef, rtol=1e-6)
        assert abs(fits.loglik.iloc[i] - alone.loglik) < 1e-6
        result = fits.result(i)
        np.testing.assert_allclose(result.theta, alone.theta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.fixef_se, alone.fixef_se, rtol=1e-5)
        np.testing.assert_allclose(result.ranef["Subject"].to_numpy(),
                                   alone.ranef["Subject"].to_numpy(), rtol=1e-4, atol=1e-6)
    assert fits.converged.all()
    assert set(fits.seconds) >= {"design", "compile", "run", "total"}


def test_datasets_of_different_sizes_pad_into_buckets_exactly():
    """Fewer rows and fewer subjects than the largest dataset: padded rows have weight 0,
    padded levels no rows; each fit equals the dataset fitted alone."""
    data = jg.load_dataset("sleepstudy")
    subjects = data.Subject.unique()
    rng = np.random.default_rng(4)
    frames = []
    for k, (n_subj, n_days) in enumerate([(18, 10), (12, 10), (18, 7), (9, 6), (15, 9)]):
        part = data[data.Subject.isin(subjects[:n_subj]) & (data.Days < n_days)]
        part = part.assign(Reaction=part.Reaction + rng.normal(0, 5, len(part)), sim=k)
        frames.append(part)
    long = pd.concat(frames, ignore_index=True)
    fits = jg.fit_many(SLEEP, long, by="sim", progress=False)
    for k, part in enumerate(frames):
        alone = _alone(part)
        np.testing.assert_allclose(fits.fixef.iloc[k], alone.fixef, rtol=1e-6)
        assert abs(fits.loglik.iloc[k] - alone.loglik) < 1e-6
        assert fits.result(k).ranef["Subject"].shape[0] == part.Subject.nunique()


def test_lists_and_folders_go_through_the_same_pass(sleep_fit, tmp_path):
    _, fit = sleep_fit
    long, _ = _long(fit, 3, seed=5)
    frames = [g.drop(columns="sim").reset_index(drop=True) for _, g in long.groupby("sim")]
    for k, frame in enumerate(frames):
        frame.to_csv(tmp_path / f"d{k}.csv", index=False)
    by = jg.fit_many(SLEEP, long, by="sim", progress=False)
    listed = jg.fit_many(SLEEP, frames, progress=False)
    folder = jg.fit_many(SLEEP, str(tmp_path), progress=False)
    assert list(folder.fixef.index) == ["d0", "d1", "d2"]
    np.testing.assert_allclose(listed.fixef.to_numpy(), by.fixef.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(folder.fixef.to_numpy(), by.fixef.to_numpy(), rtol=1e-8)


def test_a_second_same_bucket_batch_compiles_nothing(sleep_fit):
    model, fit = sleep_fit
    long1, Y1 = _long(fit, 8, seed=6)
    long2, Y2 = _long(fit, 8, seed=7)
    jg.fit_many(SLEEP, long1, by="sim", progress=False)
    jg.refit_many(model, Y1, progress=False)
    before = cache.n_compiled()
    second = jg.fit_many(SLEEP, long2, by="sim", progress=False)
    again = jg.refit_many(model, Y2, progress=False)
    assert cache.n_compiled() == before
    assert second.seconds["compile"] < 0.05 and again.seconds["compile"] < 0.05
    np.testing.assert_allclose(second.fixef.to_numpy(), again.fixef.to_numpy(), rtol=1e-6)


def test_failed_datasets_are_flagged_and_leave_the_others_alone(sleep_fit):
    """One all-zero response and one with no between-subject variation (a singular fit)
    are flagged in their own rows; the other rows equal those of a clean batch."""
    _, fit = sleep_fit
    long, _ = _long(fit, 6, seed=8)
    clean = jg.fit_many(SLEEP, long, by="sim", progress=False)
    bad = long.copy()
    bad.loc[bad.sim == "s1", "Reaction"] = 0.0
    rng = np.random.default_rng(0)
    rows = bad.sim == "s4"
    bad.loc[rows, "Reaction"] = 250 + 10 * bad.loc[rows, "Days"] + rng.normal(0, 30, rows.sum())
    fits = jg.fit_many(SLEEP, bad, by="sim", progress=False)
    assert not fits.converged["s1"] and fits.messages["s1"]
    assert fits.singular["s4"] and "singular" in fits.messages["s4"]
    keep = ["s0", "s2", "s3", "s5"]
    np.testing.assert_allclose(fits.fixef.loc[keep].to_numpy(), clean.fixef.loc[keep].to_numpy(),
                               rtol=1e-7)
    assert fits.converged[keep].all()
    table = fits.table()
    assert table.loc[table.dataset == "s1", "converged"].eq(False).all()


def test_rank_deficient_dataset_is_flagged_not_fitted():
    data = jg.load_dataset("sleepstudy").assign(x=lambda d: (d.Days > 4).astype(float))
    frames = [data.assign(sim=0), data.assign(sim=1, x=0.0)]   # x all zero in dataset 1
    fits = jg.fit_many("Reaction ~ Days + x + (1 | Subject)", pd.concat(frames), by="sim",
                       progress=False)
    assert fits.converged.tolist() == [True, False]
    assert "rank deficient" in fits.messages.iloc[1]
    assert np.isnan(fits.fixef.iloc[1]).all()
    with pytest.raises(ValueError, match="not fitted"):
        fits.result(1)


def test_table_and_frames_agree_with_results(sleep_fit):
    model, fit = sleep_fit
    Y = fit.simulate(3, seed=9).to_numpy().T
    fits = jg.refit_many(fit, Y, progress=False)
    table = fits.table()
    assert list(table.columns) == ["dataset", "effect", "group", "term", "estimate", "se",
                                   "converged", "loglik"]
    assert len(table) == 3 * (2 + 4)       # two fixed effects; two SDs, a correlation, sigma
    r = fits.result(2)
    fixed = table[(table.dataset == "2") & (table.effect == "fixed")]
    np.testing.assert_allclose(fixed.estimate, r.fixef, rtol=1e-12)
    np.testing.assert_allclose(fixed.se, r.fixef_se, rtol=1e-8)
    vc = r.varcorr
    np.testing.assert_allclose(fits.varcorr.loc["2", "Subject: sd(Days)"],
                               vc.loc[(vc.var1 == "Days") & vc.var2.isna(), "sd_or_cor"].iloc[0],
                               rtol=1e-8)
    np.testing.assert_allclose(fits.varcorr.loc["2", "Residual: sd"], r.sigma, rtol=1e-12)
    assert fits.loglik.index.name == "dataset"


def test_refit_from_a_fit_and_from_a_model_agree(sleep_fit):
    model, fit = sleep_fit
    Y = fit.simulate(16, seed=10).to_numpy().T
    from_fit = jg.refit_many(fit, Y, progress=False)
    from_model = jg.refit_many(model, Y, progress=False)
    np.testing.assert_allclose(from_fit.fixef.to_numpy(), from_model.fixef.to_numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(from_fit.loglik.to_numpy(), from_model.loglik.to_numpy(),
                               atol=1e-7)


def test_chunks_after_the_first_start_from_its_fits(sleep_fit):
    """refit_many from a Model pilots once: later chunks start from the first chunk's
    typical optimum, and every chunk's fits equal one unchunked batch's."""
    model, fit = sleep_fit
    Y = fit.simulate(40, seed=12).to_numpy().T
    whole = jg.refit_many(model, Y, progress=False)
    chunked = jg.refit_many(model, Y, chunk_size=16, progress=False)
    assert len(chunked.chunks) == 3
    np.testing.assert_allclose(chunked.fixef.to_numpy(), whole.fixef.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(chunked.loglik.to_numpy(), whole.loglik.to_numpy(), atol=1e-6)
    later = chunked.chunks[1].buckets[0].raw.n_iter
    first = chunked.chunks[0].buckets[0].raw.n_iter
    assert np.median(later) < np.median(first)       # no pilot from lme4's start


def test_a_batchs_forward_difference_hessian_matches_a_single_fits(sleep_fit):
    """LMM batches make theta's Hessian by forward differences (k gradients, not 2k):
    within 1e-3 of the single fit's central differences, and just as positive definite."""
    model, fit = sleep_fit
    Y = np.asarray(model.arrays.y)[None, :]
    batch = jg.refit_many(model, Y, progress=False)
    H_batch = np.asarray(batch.result(0).optinfo["hessian"])
    H_alone = np.asarray(fit.optinfo["hessian"])
    # theta is determined up to the signs of Lambda's columns (the batch may land on the
    # mirror image): compare what those leave alone, the diagonal and the eigenvalues
    np.testing.assert_allclose(np.diag(H_batch), np.diag(H_alone), rtol=1e-3)
    np.testing.assert_allclose(np.linalg.eigvalsh(H_batch), np.linalg.eigvalsh(H_alone),
                               rtol=1e-3)
    np.testing.assert_allclose(np.abs(H_batch), np.abs(H_alone), rtol=1e-3,
                               atol=1e-3 * np.abs(H_alone).max())
    assert np.linalg.eigvalsh(H_batch).min() > 0 and bool(batch.converged.iloc[0])


def test_prepared_refits_compile_nothing_more():
    """prepare_refits compiles refit_many's programs in the background (the bootstrap
    simulates meanwhile); the refit then compiles nothing and equals an unprepared one."""
    from jaxglmm.many.batch import prepare_refits
    cache.clear_caches()
    model = jg.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                     jg.load_dataset("cbpp"), "binomial")
    fit = model.fit()
    Y = np.asarray(fit.simulate(24, seed=3).to_numpy().T, float)
    seconds = prepare_refits(fit, 24).result()
    assert seconds > 0
    before = cache.n_compiled()
    prepared = jg.refit_many(fit, Y, progress=False)
    # n_compiled counts every XLA compile of the process (a timed bound would be flaky here)
    assert cache.n_compiled() == before
    cache.clear_caches()
    fresh = jg.refit_many(fit, Y, progress=False)
    np.testing.assert_allclose(prepared.fixef.to_numpy(), fresh.fixef.to_numpy(), rtol=1e-10)


def test_glmm_by_equals_alone():
    rng = np.random.default_rng(11)
    frames = []
    for k in range(4):
        g = np.repeat(np.arange(15 + k), 8)
        x = rng.normal(size=g.size)
        eta = -0.3 + 0.8 * x + rng.normal(0, 0.7, g.max() + 1)[g]
        frames.append(pd.DataFrame({"y": rng.binomial(1, 1 / (1 + np.exp(-eta))), "x": x,
                                    "g": g, "sim": k}))
    long = pd.concat(frames, ignore_index=True)
    fits = jg.fit_many("y ~ x + (1 | g)", long, family="bernoulli", by="sim", progress=False)
    for k, frame in enumerate(frames):
        alone = jg.fit("y ~ x + (1 | g)", frame.drop(columns="sim"), family="bernoulli")
        np.testing.assert_allclose(fits.fixef.iloc[k], alone.fixef, rtol=1e-5, atol=1e-6)
        assert abs(fits.loglik.iloc[k] - alone.loglik) < 1e-6


def test_bad_inputs_name_the_problem(sleep_fit):
    data = jg.load_dataset("sleepstudy")
    with pytest.raises(ValueError, match="by="):
        jg.fit_many(SLEEP, data)
    with pytest.raises(ValueError, match="not a column"):
        jg.fit_many(SLEEP, data, by="sim")
    with pytest.raises(ValueError, match="chunk_size"):
        jg.fit_many(SLEEP, data.assign(sim=1), by="sim", chunk_size=0)
    with pytest.raises(ValueError, match="no .csv"):
        jg.fit_many(SLEEP, "/nonexistent/*.csv")


@pytest.mark.parametrize("formula", ["Reaction ~ scale(Days) + (1 | Subject)",
                                     "Reaction ~ log(1 + center(Days)) + (1 | Subject)",
                                     "Reaction ~ poly(Days, 2) + (1 | Subject)"])
def test_data_dependent_transforms_are_refused_not_pooled(formula):
    """One design for all datasets would standardize over all of them at once: a fit of
    each alone standardizes over its own rows, so the batch refuses, naming the call."""
    data = jg.load_dataset("sleepstudy")
    with pytest.raises(ValueError, match=r"computed over all of them together"):
        jg.fit_many(formula, pd.concat([data.assign(sim=0), data.assign(sim=1)]), by="sim")


FAMILY_CASES = {
    "poisson_crossed": ("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", "grouseticks",
                        "poisson", {}, "TICKS"),
    "negbinomial": ("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", "grouseticks", "negbinomial", {},
                    "TICKS"),
    "cumulative": ("rating ~ temp + contact + (1 | judge)", "wine", "cumulative", {}, "rating"),
    "binomial_agq": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp",
                     "binomial", {"method": "agq", "agq_points": 9}, "incidence"),
    "gaussian_ml_nested": ("strength ~ 1 + (1 | batch/cask)", "pastes", "gaussian",
                           {"method": "ml"}, "strength"),
    "gaussian_reml_crossed": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin",
                              "gaussian", {}, "diameter"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_every_likelihood_method_batches_as_alone(case):
    """Families with parameters, ordinal thresholds, adaptive quadrature, nested and crossed
    factors: three simulated datasets in one long table, each as fitted alone."""
    formula, name, family, options, response = FAMILY_CASES[case]
    data = jg.load_dataset(name)
    fit = jg.fit(formula, data, family, **options)
    sims = fit.simulate(3, seed=12)
    frames = []
    for k, col in enumerate(sims.columns):
        frame = data.loc[sims.index].copy()
        frame[response] = sims[col].to_numpy()         # counts, or an ordinal's labels
        frames.append(frame.assign(sim=k))
    fits = jg.fit_many(formula, pd.concat(frames, ignore_index=True), family, by="sim",
                       progress=False, **options)
    for k, frame in enumerate(frames):
        alone = jg.fit(formula, frame.drop(columns="sim"), family, **options)
        np.testing.assert_allclose(fits.fixef.iloc[k], alone.fixef, rtol=1e-5, atol=1e-6)
        assert abs(fits.loglik.iloc[k] - alone.loglik) < 1e-5
        assert fits.converged.iloc[k] == alone.converged


def test_a_response_the_family_refuses_is_flagged_in_its_row():
    rng = np.random.default_rng(13)
    frames = []
    for k in range(3):
        g = np.repeat(np.arange(12), 6)
        frames.append(pd.DataFrame({"y": rng.poisson(3.0, g.size).astype(float),
                                    "x": rng.normal(size=g.size), "g": g, "sim": k}))
    frames[1].loc[3, "y"] = -1.0                          # not a count
    fits = jg.fit_many("y ~ x + (1 | g)", pd.concat(frames, ignore_index=True),
                       family="poisson", by="sim", progress=False)
    assert fits.converged.tolist() == [True, False, True]
    assert "not fitted" in fits.messages.iloc[1] and "poisson" in fits.messages.iloc[1]
    alone = jg.fit("y ~ x + (1 | g)", frames[2].drop(columns="sim"), family="poisson")
    np.testing.assert_allclose(fits.fixef.iloc[2], alone.fixef, rtol=1e-5)
    assert fits.spec.family == alone.problem.family      # the family, checking included
