"""One model, many datasets: ``fit_many`` (datasets) and ``refit_many`` (responses).

``fit_many`` turns its datasets into one long table, builds its design in one pass
(:mod:`jaxglmm.many.plan`), splits it into chunks of datasets, and fits each chunk with the
batch engine (:mod:`jaxglmm.fit.batched`) in this process or on Dask workers
(:mod:`jaxglmm.many.executor`).  ``refit_many`` keeps one design and stacks responses: what
does not depend on the response is computed once.  Likelihood methods only: nuts, vi and
map are refused rather than run as something else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..core.problem import ProblemArrays
from ..families import Family, get_family
from ..fit.batched import fit_batch, prepare_batch, slot_size, typical_member
from ..fit.cache import free_programs_near_map_cap
from ..fit.convergence import judge_many
from ..fit.likelihood import RawFit, uses_lmm
from ..methods import METHODS, get_method
from ..model import Model
from ..results.build import likelihood_result
from .checkpoint import Checkpoint, saved_chunk_size
from .chunk import Bucket, ChunkFits, Payload, fit_chunk
from .executor import run_chunks
from .plan import warn_failures
from .plan import (Member, Spec, batch_size, long_table, memory_chunk_size, model_keywords,
                   refuse_stateful, split_design, unvalidated)


# ----------------------------------------------------------------------------- the plan
@dataclass
class ManyPlan:
    """A fit_many run, split into chunks of datasets (see :func:`plan_many`)."""

    spec: Spec
    ids: list
    chunks: list
    members: list
    arrays: ProblemArrays              # numpy: the long design
    table: pd.DataFrame                # the long table
    codes: np.ndarray                  # each table row's dataset
    design_seconds: float = 0.0
    chunk_size: int = 0                # datasets per chunk (the last may hold fewer)

    @property
    def method(self) -> str:
        return self.spec.method

    def payload(self, k: int, start=None) -> Payload:
        """The picklable input of chunk k: the spec and the chunk's rows of the design."""
        positions = self.chunks[k]
        members = [self.members[i] for i in positions]
        rows = [m.rows for m in members if m is not None]
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        arrays = jax.tree.map(lambda v: np.asarray(v)[rows], self.arrays)
        rebased, offset = [], 0
        for m in members:
            if m is None:
                rebased.append(None)
                continue
            rebased.append(Member(np.arange(offset, offset + m.rows.size), m.index, m.levels,
                                  m.rank_ok, m.invalid))
            offset += m.rows.size
        return Payload(self.spec, [self.ids[i] for i in positions], arrays, rebased, start)

    def dataset(self, i: int) -> pd.DataFrame:
        """Dataset i's rows of the long table (as it would be fitted alone)."""
        return self.table.loc[self.codes == i].reset_index(drop=True)


def plan_many(formula: str, data, family: str | Family = "gaussian", method: str | None = None,
              link: str | None = None, *, by: str | None = None, chunk_size: int | None = None,
              **kwargs) -> ManyPlan:
    """Read the datasets, build the long design once and split it into chunks."""
    _refuse_bayes(method)
    model_kw = model_keywords(kwargs)
    refuse_stateful(formula, model_kw, by)
    _chunk_size(chunk_size, 1)
    start = time.perf_counter()
    table, ids, codes = long_table(data, by)
    checked = get_family(family, link)
    # each dataset's response is checked alone (one the family refuses is flagged)
    model = Model(formula, table, unvalidated(checked), None, **model_kw)
    _compiled_optimizer_only(kwargs, "fit_many")
    method, options = model.resolve_method(method, kwargs)
    method = model.check_method(method, options)
    members = split_design(model, codes, len(ids), checked.validate)
    spec = Spec(formula, replace(model.family, validate=checked.validate), method,
                dict(options), model.structure, tuple(model.design.fixef_names), model_kw)
    arrays = jax.tree.map(np.asarray, model.arrays)
    sizes = [m.rows.size for m in members if m is not None]
    chunk_size = _chunk_size(chunk_size, memory_chunk_size(
        max(sizes, default=1), len(spec.fixef_names), spec.structure))
    chunks = [np.arange(i, min(i + chunk_size, len(ids))) for i in range(0, len(ids), chunk_size)]
    return ManyPlan(spec, ids, chunks, members, arrays, table, codes,
                    time.perf_counter() - start, chunk_size)


def _chunk_size(value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"chunk_size must be a positive integer (datasets per chunk), got "
                         f"{value!r}")
    return int(value)


def collect(plan: ManyPlan, results: list) -> "ManyFits":
    """The run's :class:`ManyFits` from its chunks' results (in chunk order)."""
    seconds = {"design": plan.design_seconds,
               "compile": sum(r.seconds.get("compile", 0.0) for r in results),
               "run": sum(r.seconds.get("run", 0.0) for r in results)}
    seconds["total"] = seconds["design"] + seconds["compile"] + seconds["run"]
    return ManyFits(plan.spec, list(plan.ids), list(results), seconds, plan=plan)


# ----------------------------------------------------------------------------- results
@dataclass
class ManyFits:
    """Results of :func:`fit_many` or :func:`refit_many`, one entry per dataset.

    ``fits.table()`` is the long tidy table; ``fits.fixef``, ``fits.varcorr``,
    ``fits.loglik`` and ``fits.converged`` are indexed by dataset; ``fits.result(i)`` (or
    ``fits[i]``) is dataset i's full :class:`~jaxglmm.results.FitResult`.  ``seconds``
    holds the time spent building the design, compiling and running.
    """

    spec: Spec
    ids: list
    chunks: list
    seconds: dict
    plan: ManyPlan | None = None
    model: Model | None = None           # refit_many: the one design
    responses: np.ndarray | None = None  # refit_many: one response per dataset
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def method(self) -> str:
        return self.spec.method

    def _locate(self, i: int) -> tuple[ChunkFits, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"dataset {i} out of range: {len(self)} datasets")
        i = i % len(self)
        for chunk in self.chunks:
            if i < len(chunk):
                return chunk, i
            i -= len(chunk)
        raise IndexError(i)

    def raw(self, i: int) -> RawFit | None:
        chunk, k = self._locate(i)
        return chunk.raw(k)

    def result(self, i: int):
        """Dataset i's full FitResult, as if it had been fitted alone."""
        chunk, k = self._locate(i)
        raw = chunk.raw(k)
        if raw is None:
            raise ValueError(f"dataset {self.ids[i]!r} was not fitted: "
                             f"{'; '.join(chunk.messages[k])}")
        if self.model is not None:
            model = self.model.with_response(self.responses[i])
        else:
            model = Model(self.spec.formula, self.plan.dataset(i), self.spec.family,
                          **self.spec.model_kw)
            raw = _match_factors(raw, self.spec.structure, model.structure)
        per_fit = (self.seconds["compile"] + self.seconds["run"]) / max(len(self), 1)
        return likelihood_result(model.spec, model.problem, self.method, self.spec.options, raw,
                                 per_fit)

    __getitem__ = result

    def _stacked(self, name: str, shape: tuple = ()) -> np.ndarray:
        key = (name, shape)
        if key not in self._cache:
            self._cache[key] = np.concatenate([c.stacked(name, shape) for c in self.chunks])
        return self._cache[key]

    def _index(self) -> pd.Index:
        return pd.Index(self.ids, name="dataset")

    @property
    def fixef(self) -> pd.DataFrame:
        names = list(self.spec.fixef_names)
        return pd.DataFrame(self._stacked("beta", (len(names),)), index=self._index(),
                            columns=names)

    @property
    def fixef_se(self) -> pd.DataFrame:
        p = len(self.spec.fixef_names)
        vcov = self._stacked("vcov", (p, p))
        se = np.sqrt(np.clip(np.diagonal(vcov, axis1=1, axis2=2), 0, None))
        return pd.DataFrame(se, index=self._index(), columns=list(self.spec.fixef_names))

    @property
    def loglik(self) -> pd.Series:
        return pd.Series(self._stacked("loglik"), index=self._index(), name="loglik")

    @property
    def theta(self) -> np.ndarray:
        return self._stacked("theta", (self.spec.structure.n_theta,))

    @property
    def sigma(self) -> pd.Series:
        return pd.Series(self._stacked("sigma"), index=self._index(), name="sigma")

    @property
    def converged(self) -> pd.Series:
        return pd.Series(np.concatenate([c.converged for c in self.chunks]),
                         index=self._index(), name="converged")

    @property
    def singular(self) -> pd.Series:
        return pd.Series(np.concatenate([c.singular for c in self.chunks]),
                         index=self._index(), name="singular")

    @property
    def messages(self) -> pd.Series:
        return pd.Series(["; ".join(m) for c in self.chunks for m in c.messages],
                         index=self._index(), name="message")

    @property
    def varcorr(self) -> pd.DataFrame:
        """Random-effect SDs and correlations (and the residual SD of a linear mixed
        model), one row per dataset: columns ``"group: sd(name)"``, ``"group: cor(a, b)"``."""
        return _varcorr_wide(self.spec, self.theta, self.sigma.to_numpy(), self._index())

    def wide(self) -> pd.DataFrame:
        """One row per dataset: dataset, the fixed effects, loglik, converged, message."""
        return pd.concat([c.wide() for c in self.chunks], ignore_index=True)

    def table(self) -> pd.DataFrame:
        """The long tidy table (broom.mixed's ``tidy`` layout): one row per dataset and
        estimate, with columns dataset, effect ("fixed" or "ran_pars"), group, term,
        estimate, se (NaN for variance components), converged and loglik."""
        fixef, se = self.fixef, self.fixef_se
        vc = self.varcorr
        parts = []
        for name in fixef.columns:
            parts.append(pd.DataFrame({"dataset": self.ids, "effect": "fixed", "group": None,
                                       "term": name, "estimate": fixef[name].to_numpy(),
                                       "se": se[name].to_numpy()}))
        for col in vc.columns:
            group, term = col.split(": ", 1)
            parts.append(pd.DataFrame({"dataset": self.ids, "effect": "ran_pars",
                                       "group": group, "term": term,
                                       "estimate": vc[col].to_numpy(), "se": np.nan}))
        out = pd.concat(parts, ignore_index=True)
        order = {d: k for k, d in enumerate(self.ids)}
        out = out.iloc[np.argsort(out["dataset"].map(order).to_numpy(), kind="stable")]
        out["converged"] = out["dataset"].map(dict(zip(self.ids, self.converged)))
        out["loglik"] = out["dataset"].map(dict(zip(self.ids, self.loglik)))
        return out.reset_index(drop=True)


def _varcorr_wide(spec: Spec, theta: np.ndarray, sigma: np.ndarray, index) -> pd.DataFrame:
    lmm = spec.family.exact_lmm and not get_method(spec.method).bayesian
    cols: dict = {}
    s = spec.structure
    for t in s.terms:
        L = np.zeros((theta.shape[0], t.q, t.q))
        for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
            L[:, r - t.col0, c - t.col0] = theta[:, t.theta_start + k]
        C = L @ np.swapaxes(L, 1, 2)
        if lmm:
            C = C * np.square(sigma)[:, None, None]
        sd = np.sqrt(np.clip(np.diagonal(C, axis1=1, axis2=2), 0, None))
        for i, name in enumerate(t.names):
            cols[f"{t.label}: sd({name})"] = sd[:, i]
        for i in range(t.q):
            for j in range(i + 1, t.q):
                with np.errstate(invalid="ignore", divide="ignore"):
                    cols[f"{t.label}: cor({t.names[i]}, {t.names[j]})"] = \
                        C[:, i, j] / (sd[:, i] * sd[:, j])
    if lmm:
        cols["Residual: sd"] = sigma
    return pd.DataFrame(cols, index=index)


def _match_factors(raw: RawFit, long_structure, alone_structure) -> RawFit:
    """A fit's per-factor parts in the factor order of the dataset fitted alone (factors
    are sorted by their numbers of levels, which a dataset alone can order otherwise)."""
    groups = [f.group for f in long_structure.factors]
    order = [groups.index(f.group) for f in alone_structure.factors]
    if order == list(range(len(order))):
        return raw
    pieces, pos = [], 0
    for f, b in zip(long_structure.factors, raw.b):
        pieces.append(raw.u[pos:pos + b.shape[0] * f.q])
        pos += b.shape[0] * f.q
    return raw._replace(b=tuple(raw.b[k] for k in order), b_cov=tuple(raw.b_cov[k] for k in order),
                        u=np.concatenate([pieces[k] for k in order]))


# ----------------------------------------------------------------------------- entry points
def fit_many(formula: str, data, family: str | Family = "gaussian", method: str | None = None,
             link: str | None = None, *, by: str | None = None, chunk_size: int | None = None,
             executor=None, progress: bool | None = None, checkpoint=None,
             **kwargs) -> ManyFits:
    """Fit one model to many datasets.

    ``data`` is one long DataFrame with a dataset column named by ``by`` (the fast path),
    a list of DataFrames, a dict of them (its keys label the datasets), or a folder or
    glob of CSV/Parquet files.  The design is built once for all rows; datasets of
    different sizes are padded into a few shape buckets, and each padded fit equals the
    dataset fitted alone.  ``chunk_size`` datasets go to the engine at once (default: as
    many as fit in 1 GiB, at most 16,384); ``executor`` a ``dask.distributed.Client``
    sends chunks to its workers; ``progress`` shows a bar over datasets (default: on a
    terminal).

    ``checkpoint`` a folder: each finished chunk is saved there as it finishes
    (:mod:`jaxglmm.many.checkpoint`), and a call with the same inputs fits only the chunks
    not saved yet and returns the same fits as a run never stopped (without
    ``chunk_size``, it goes on with the saved run's).  A folder made for other inputs is
    refused (ValueError).  The folder is kept: delete it when done.

    Examples
    --------
    >>> fits = jg.fit_many("Reaction ~ Days + (Days | Subject)", sims, by="sim")
    >>> fits.table().head()
    """
    free_programs_near_map_cap()
    if checkpoint is not None and chunk_size is None:
        chunk_size = saved_chunk_size(checkpoint)
    plan = plan_many(formula, data, family, method, link, by=by, chunk_size=chunk_size,
                     **kwargs)
    store = None if checkpoint is None else Checkpoint(checkpoint, plan)
    fits = fit_plan(plan, executor=executor, progress=progress, checkpoint=store)
    warn_failures(fits)
    return fits


def fit_plan(plan: ManyPlan, *, executor=None, progress: bool | None = None,
             checkpoint: Checkpoint | None = None) -> ManyFits:
    """Fit a plan's chunks (with a ``checkpoint``: only those not saved there, each saved
    as it finishes) and collect them (no warning: the caller says what failed)."""
    results: list = [None] * len(plan.chunks)
    todo = list(range(len(plan.chunks)))
    if checkpoint is not None:
        todo = checkpoint.missing()
        for k in checkpoint.saved:
            results[k] = checkpoint.load(k)

    def done(j: int, fits: ChunkFits) -> None:
        results[todo[j]] = fits
        if checkpoint is not None:
            checkpoint.save(todo[j], fits)

    run_chunks(fit_chunk, _Payloads(plan, todo), executor=executor, progress=progress,
               done=done, sizes=[len(plan.chunks[k]) for k in todo])
    return collect(plan, results)


class _Payloads:
    """The payloads of the chunks ``todo``, each built when it is needed."""

    def __init__(self, plan: ManyPlan, todo: list[int]):
        self.plan, self.todo = plan, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int) -> Payload:
        return self.plan.payload(self.todo[j])


def refit_many(model, responses: np.ndarray, method: str | None = None, *,
               chunk_size: int | None = None, progress: bool | None = None,
               **options) -> ManyFits:
    """Refit ``model`` to many responses (rows of ``responses``, shape (B, n)) with the same
    design: parametric bootstrap, power and simulation studies (lme4's ``refit``).

    ``model`` is a :class:`~jaxglmm.Model`, or a likelihood FitResult of one: then every
    refit starts at its optimum, with its Hessian, as lme4's ``refit`` starts at the fitted
    theta; from a Model, a few responses are fitted first and start the rest."""
    _refuse_bayes(method)
    free_programs_near_map_cap()
    spec, model, fit, Y, chunks, start = _refit_setup(model, responses, method, chunk_size,
                                                      options)
    jobs = _RefitJobs(spec, model, Y, start, chunks)
    results = run_chunks(_refit_chunk, jobs, progress=progress, done=jobs.done,
                         sizes=[len(c) for c in chunks])
    seconds = {"design": 0.0, "compile": sum(r.seconds["compile"] for r in results),
               "run": sum(r.seconds["run"] for r in results)}
    seconds["total"] = seconds["compile"] + seconds["run"]
    ids = [str(k) for k in range(Y.shape[0])]
    return ManyFits(spec, ids, results, seconds, model=model, responses=Y)


def prepare_refits(fit, n: int, method: str | None = None, **options):
    """Compile, in a background thread, what ``refit_many(fit, Y)`` runs for ``n``
    responses, so the caller can make them meanwhile (the parametric bootstrap simulates
    while its refits compile: two cores, two compiles).  Returns a Future; refit_many
    finds the programs compiled or waits for them."""
    spec, model, fit, Y, chunks, start = _refit_setup(
        fit, np.zeros((1, 0)), method, None, options, n_responses=n)
    args, refit, slots = _refit_args(spec, model, Y[chunks[0]], start)
    return prepare_batch(model.problem, get_method(spec.method), spec.options, args, refit,
                         slots)


def _compiled_optimizer_only(options: dict, who: str) -> None:
    """A batch runs the compiled BFGS for every dataset: a host optimizer named for it is
    refused rather than replaced."""
    chosen = options.get("optimizer")
    if chosen not in (None, "bfgs"):
        raise ValueError(f"{who} fits every dataset with the compiled BFGS; optimizer="
                         f"{chosen!r} applies to single fits only (leave it out, or pass "
                         "optimizer='bfgs')")


def _refit_setup(model, responses, method, chunk_size, options, n_responses=None):
    """refit_many's checked inputs: (spec, model, fit, Y, chunks, start).  With
    ``n_responses`` (:func:`prepare_refits`) Y is that many copies of the model's own
    response, for the shapes alone."""
    fit = None
    if not isinstance(model, Model):
        fit = model
        if not hasattr(fit, "problem") or not getattr(fit, "optinfo", None):
            raise TypeError("refit_many takes a Model or a likelihood FitResult of one, got "
                            f"{type(fit).__name__}")
        model = Model.of(fit.problem, fit.spec)
    _compiled_optimizer_only(options, "refit_many")
    method, options = model.resolve_method(method if method is not None or fit is None
                                           else fit.method, options)
    method = model.check_method(method, options)
    if n_responses is not None:
        Y = np.broadcast_to(np.asarray(model.arrays.y, float), (n_responses, model.design.nobs))
    else:
        Y = np.asarray(responses, float)
        if Y.ndim != 2 or Y.shape[1] != model.design.nobs:
            raise ValueError(f"responses must have shape (B, {model.design.nobs}), got "
                             f"{Y.shape}")
        for row in Y:
            model.family.validate(row, model.design.trials)
    spec = Spec(model.formula, model.family, method, dict(options), model.structure,
                tuple(model.design.fixef_names), {})
    start = _fit_start(fit, method, model.problem.n_params)
    size = _chunk_size(chunk_size, memory_chunk_size(
        model.design.nobs, model.design.n_fixef, model.structure,
        responses_only=uses_lmm(model.problem, get_method(method))))
    chunks = [np.arange(i, min(i + size, Y.shape[0])) for i in range(0, Y.shape[0], size)]
    return spec, model, fit, Y, chunks, start


def _fit_start(fit, method: str, n_params: int):
    """(x0, Hinv0) from a fit of the same model and method, else None (a pilot)."""
    if fit is None or fit.method != method:
        return None
    return _start_at(fit.optinfo["x"], fit.optinfo["hessian"])


def _start_at(x, H):
    """(x0, Hinv0) at an optimum: the inverse of its Hessian where that is positive
    definite, else None for Hinv0 (the first step is then the gradient's)."""
    x, H = np.asarray(x, float), np.asarray(H, float)
    if not (np.all(np.isfinite(H)) and np.linalg.eigvalsh(H)[0] > 0):
        return x, None
    return x, np.linalg.inv(H)


class _RefitJobs:
    """``refit_many``'s chunk payloads, built as the chunks run (here, in order).  Without a
    fit to start from, the first chunk pilots (:func:`~jaxglmm.fit.batched.fit_batch`) and
    the later ones start from its typical optimum, as that chunk's own later members do:
    one pilot per call, not one per chunk (10,000 sleepstudy refits in 5 chunks: the four
    later pilots were about a tenth of the warm time)."""

    def __init__(self, spec, model, Y, start, chunks):
        self.spec, self.model, self.Y, self.start, self.chunks = spec, model, Y, start, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k):
        c = self.chunks[k]
        return (self.spec, self.model, self.Y[c], self.start, c)

    def done(self, k: int, result: ChunkFits) -> None:
        if self.start is None:
            self.start = _chunk_start(result)


def _chunk_start(result: ChunkFits):
    """(x0, Hinv0) of the chunk's converged fit nearest the median of the converged ones
    (the inverse of its Hessian where that is positive definite), or None."""
    x = result.stacked("x", np.shape(result.buckets[0].raw.x)[1:])
    pick = typical_member(result.converged, x)
    if pick is None:
        return None
    H = result.stacked("hessian", np.shape(result.buckets[0].raw.hessian)[1:])
    return _start_at(x[pick], H[pick])


def _refit_args(spec, model, Y, start):
    """fit_batch's arguments for refits of ``Y`` (B, n): (args, refit, slots)."""
    B = Y.shape[0]
    # every chunk one shape (one compile): the slots of a power-of-two batch
    slots = slot_size(batch_size(B, len(jax.devices())))
    problem = model.problem
    k = problem.n_params - (len(spec.fixef_names) + problem.n_phi if problem.exact_lmm else 0)
    x0 = np.full(k, np.nan) if start is None else start[0]
    H0 = np.full((k, k), np.nan) if start is None or start[1] is None else start[1]
    if uses_lmm(problem, get_method(spec.method)):
        x0 = np.where(np.isfinite(x0), x0, problem.structure.theta_init())
        # host arrays: the engine hands the slots their members' rows (fit/batched.py)
        args = (model.arrays, Y, jnp.asarray(x0), jnp.asarray(H0))
        refit = True
    else:
        arrays = jax.tree.map(lambda v: np.broadcast_to(np.asarray(v), (B,) + v.shape),
                              model.arrays)
        arrays = arrays._replace(y=Y)
        phi0 = np.stack([np.asarray(model.family.init_params(y, model.design.trials), float)
                         for y in Y])
        args = (arrays, phi0, jnp.asarray(x0), jnp.asarray(H0))
        refit = False
    return args, refit, slots


def _refit_chunk(job) -> ChunkFits:
    spec, model, Y, start, positions = job
    B, problem = Y.shape[0], model.problem
    args, refit, slots = _refit_args(spec, model, Y, start)
    raw, times = fit_batch(problem, get_method(spec.method), spec.options, args, refit=refit,
                           pilot=start is None, slots=slots)
    verdicts = judge_many(raw.status, raw.grad, raw.hessian, raw.theta,
                          problem.structure.theta_diagonal(), raw.n_iter)
    converged = np.array([v.converged for v in verdicts])
    singular = np.array([v.singular for v in verdicts])
    bucket = Bucket(np.arange(B), raw, problem.structure, [None] * B)
    return ChunkFits([str(k) for k in positions], [bucket], converged, singular,
                     [v.messages for v in verdicts],
                     {"compile": times.compile, "run": times.run}, spec)


def _refuse_bayes(method: str | None) -> None:
    if method is not None and not get_method(method).batchable:
        batchable = ", ".join(m.name for m in METHODS if m.batchable)
        raise ValueError(f"method {method!r} cannot be batched yet: fit_many and refit_many "
                         f"run likelihood fits ({batchable}); fit each dataset with "
                         f"Model(...).fit({method.lower()!r}) instead")


__all__ = ["ManyFits", "ManyPlan", "collect", "fit_many", "fit_plan", "plan_many",
           "refit_many"]
