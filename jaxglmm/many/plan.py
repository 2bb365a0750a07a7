"""Many datasets as one long table: one design pass, split by dataset, padded into buckets.

However the datasets come (a long table with a dataset column, a list of DataFrames, a
folder or glob of files), they become one long table.  Its design is built once, by one
formulae pass over all rows; each dataset is then a set of rows of it, with its grouping
factors' levels renumbered in their own order (the order a fit of that dataset alone
gives: the long table's level order restricted to the levels present).

Datasets of different sizes are padded into a few shape buckets: rows of weight zero (a
copy of the dataset's first row, so every value stays valid for the family) and levels
with no rows.  Neither changes a fit: a zero-weight row adds nothing to a likelihood or to
the cross-products, and an empty level's random effect is zero with a unit block in the
penalized system (log-determinant 0).
"""
from __future__ import annotations

import functools
import glob
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from .._lazy import pandas as pd

from ..core.restructure import ReStructure
from ..design import identifiability_problem, re_term_sizes, single_level_problem
from ..design.matrices import dense_unique
from ..families import Family
from ..fit.buckets import bucket_size
from ..fit.convergence import ConvergenceWarning
from ..formula.tokens import FormulaError, tokenize
from ..model import MODEL_KEYWORDS, Model

DEFAULT_CHUNK_SIZE = 2048
# The default chunk: as many datasets as fit in this much memory (see memory_chunk_size).
CHUNK_MEMORY = 1 << 30
MAX_CHUNK = 16384


def memory_chunk_size(nobs: int, n_fixef: int, structure: ReStructure,
                      responses_only: bool = False) -> int:
    """Datasets per chunk when the user does not say: as many as fit in ``CHUNK_MEMORY``,
    reckoning what a chunk holds per dataset: its arrays (rows by columns, four copies:
    input, stacked, device, the engine's member data; for an LMM refit, ``responses_only``,
    the response alone: the design is shared) and its cross-products.  The batch engine's
    working memory is its slots' (:func:`~jaxglmm.fit.batched.slot_size`, at most 1,024
    members evaluated at once, the Hessian's points one at a time), whatever the chunk's
    size.  Between 64 and ``MAX_CHUNK``."""
    cols = 1 if responses_only else n_fixef + 5 + sum(f.q + 1 for f in structure.factors)
    m = structure.p2 + n_fixef + 1
    f0 = structure.factors[0]
    per = 8 * (4 * nobs * cols + 2 * (f0.n_levels * f0.q * (f0.q + m) + m * m))
    return int(max(64, min(MAX_CHUNK, CHUNK_MEMORY // per)))


# the data files a batch reads, by suffix (pandas' readers, looked up when a file is read)
_READERS = {".csv": "read_csv", ".parquet": "read_parquet", ".pq": "read_parquet"}


# ----------------------------------------------------------------------------- sources
def _read(path: str) -> pd.DataFrame:
    suffix = Path(path).suffix.lower()
    if suffix not in _READERS:
        raise ValueError(f"cannot read {path}: fit_many reads .csv and .parquet files")
    return getattr(pd, _READERS[suffix])(path)


def _files(source: str) -> list[str]:
    if os.path.isdir(source):
        found = sorted(str(p) for p in Path(source).iterdir()
                       if p.suffix.lower() in _READERS)
    else:
        found = sorted(glob.glob(source))
    if not found:
        raise ValueError(f"no .csv or .parquet files match {source!r}")
    return found


def long_table(data, by: str | None) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """``(table, ids, codes)``: the long table, the dataset labels in order and each row's
    dataset position."""
    if isinstance(data, pd.DataFrame):
        if by is None:
            raise ValueError("fit_many was given one DataFrame: name its dataset column "
                             "with by= (or pass a list of DataFrames)")
        if by not in data.columns:
            raise ValueError(f"by={by!r} is not a column of the data (columns: "
                             f"{', '.join(map(str, data.columns))})")
        if data[by].isna().any():
            raise ValueError(f"the dataset column {by!r} has missing values")
        codes, uniques = pd.factorize(data[by], sort=False)
        table = data.reset_index(drop=True)
        return table, [str(u) for u in uniques], codes.astype(np.int64)
    if by is not None:
        raise ValueError("by= names the dataset column of one long DataFrame; a list or "
                         "folder of datasets already says which rows are which")
    if isinstance(data, (str, os.PathLike)):
        paths = _files(str(data))
        frames = [_read(p) for p in paths]
        stems = [Path(p).stem for p in paths]
        ids = stems if len(set(stems)) == len(stems) else paths
    else:
        if isinstance(data, Mapping):       # {label: DataFrame}
            frames, ids = list(data.values()), [str(k) for k in data]
            if len(set(ids)) != len(ids):
                raise ValueError("the datasets' labels (the dict's keys) must differ as "
                                 "strings")
        else:
            frames = list(data)
            ids = [str(k) for k in range(len(frames))]
        for label, f in zip(ids, frames):
            if not isinstance(f, pd.DataFrame):
                raise TypeError(f"dataset {label} is a {type(f).__name__}, not a DataFrame")
    if not frames:
        raise ValueError("fit_many needs at least one dataset")
    sizes = [len(f) for f in frames]
    table = pd.concat(frames, ignore_index=True)
    codes = np.repeat(np.arange(len(frames)), sizes)
    return table, ids, codes


# Transforms whose values depend on the data they are computed on (its mean, SD or
# orthogonal basis): over a long table they would use every dataset's rows at once.
STATEFUL = ("scale", "center", "poly")


def _stateful_calls(text: str) -> list[str]:
    try:
        tokens = tokenize(text)
    except FormulaError:
        return []                       # the model's own parse names the problem
    found = []
    for tok in tokens:
        if tok.kind == "CALL":
            if tok.func in STATEFUL:
                found.append(tok.text)
            found.extend(_stateful_calls(tok.args))
    return found


def refuse_stateful(formula: str, model_kw: dict, by: str | None) -> None:
    """fit_many builds one design for all datasets; a transform computed from the data
    would then see all of them together, unlike a fit of each dataset alone."""
    texts = [formula] + [str(v) for v in (model_kw.get("dpars") or {}).values()]
    found = [c for t in texts for c in _stateful_calls(t)]
    if found:
        column = by or "dataset"
        raise ValueError(
            f"fit_many builds one design for all datasets, so {', '.join(found)} would be "
            "computed over all of them together, not per dataset as a fit of each alone "
            "is; transform the column per dataset first, e.g. df['x_s'] = "
            f"df.groupby({column!r})['x'].transform(lambda v: (v - v.mean()) / v.std())")


# ----------------------------------------------------------------------------- the split
@dataclass(frozen=True)
class Member:
    """One dataset's rows of the long design (numpy), its levels renumbered per factor."""

    rows: np.ndarray                 # rows of the long design
    index: tuple                     # per factor: level of each row, 0..levels-1
    levels: tuple                    # per factor: the long design's level codes present
    rank_ok: bool
    invalid: str = ""                # why the family refuses this dataset's response


def _accept(y, trials) -> None:
    return None


@functools.lru_cache(maxsize=None)
def unvalidated(family: Family) -> Family:
    """The family with its response check turned off (one object per family, so programs
    compiled for it are reused): the long table is checked dataset by dataset instead, and
    a dataset the family refuses is flagged, not the batch."""
    return replace(family, validate=_accept)


def split_design(model: Model, codes: np.ndarray, n_datasets: int,
                 validate=None) -> list[Member | None]:
    """Each dataset's rows of the model's (long) design; None for a dataset with no usable
    rows.  ``validate(y, trials)`` checks each dataset's response (a ValueError's message is
    kept in the dataset's ``invalid``).  Vectorized over datasets where it counts: a
    10,000-dataset table splits in under a second."""
    design = model.design
    # a table in dataset order with no dropped rows (the usual long table) needs no copies
    # of its 1.8 million rows (each costs 30-60 ms here, mostly first-touch page faults)
    rows = design.row_index
    if isinstance(rows, pd.RangeIndex) and rows.start == 0 and rows.step == 1 \
            and len(rows) == codes.size:
        row_codes = codes
    else:
        row_codes = codes[np.asarray(rows, dtype=np.int64)]
    in_order = bool(np.all(row_codes[1:] >= row_codes[:-1]))
    if in_order:
        order = np.arange(row_codes.size)
        reorder = lambda v: v                                      # noqa: E731
    else:
        order = np.argsort(row_codes, kind="stable")
        reorder = lambda v: v[order]                               # noqa: E731
    sorted_codes = reorder(row_codes)
    bounds = np.searchsorted(sorted_codes, np.arange(n_datasets + 1))
    per_factor, present = [], []
    for idx in model.arrays.index:
        idx = reorder(np.asarray(idx, dtype=np.int64))
        n_levels = int(idx.max()) + 1 if idx.size else 1
        # (dataset, level) pairs in order; a level's rank among its dataset's levels
        pairs, inverse = dense_unique(sorted_codes * n_levels + idx, n_datasets * n_levels)
        pair_data = pairs // n_levels
        first = np.searchsorted(pair_data, np.arange(n_datasets + 1))
        rank = np.arange(pairs.size) - first[pair_data]
        per_factor.append(rank[inverse.reshape(-1)].astype(np.int32))
        present.append((pairs % n_levels, first))
    X = reorder(np.asarray(design.X, dtype=np.float64))
    p = X.shape[1]
    gram = np.zeros((n_datasets, p, p))
    starts, full = bounds[:-1], bounds[1:] > bounds[:-1]
    if X.shape[0]:
        for i in range(p):               # each dataset's X'X by sums over its sorted rows
            for j in range(i, p):
                # a trailing zero: an empty last dataset's start is a valid index
                sums = np.add.reduceat(np.append(X[:, i] * X[:, j], 0.0), starts)
                gram[:, i, j] = gram[:, j, i] = np.where(full, sums, 0.0)
    # rank by the Gram matrix's eigenvalues, at R's QR tolerance (1e-7 on singular values),
    # one block per linear predictor: each channel's columns (a categorical response's
    # copies, a parameter formula's own intercept) need full rank only among themselves
    channel = np.asarray(model.structure.fixef_channels or (0,) * p, dtype=np.int64)
    rank_ok = np.ones(n_datasets, bool)
    for c in np.unique(channel) if p else ():
        cols = np.flatnonzero(channel == c)
        evals = np.linalg.eigvalsh(gram[:, cols[:, None], cols[None, :]])
        rank_ok &= evals[:, 0] > 1e-14 * np.maximum(evals[:, -1], 1e-300)
    y = np.asarray(design.y)
    trials = None if design.trials is None else np.asarray(design.trials)
    # each dataset's slices, cut by numpy (a Python loop of slicing: 0.2 s at 10,000)
    cut = lambda v, at: np.split(v, at[1:-1])                      # noqa: E731
    rows_of = cut(order, bounds)
    index_of = list(zip(*(cut(f, bounds) for f in per_factor)))
    levels_of = list(zip(*(cut(lv, first) for lv, first in present)))
    sizes = np.diff(bounds)
    per_channel = int(np.bincount(channel).max()) if p else 0
    usable = (rank_ok & (sizes >= per_channel)).tolist()
    unidentifiable = _Identifiability(model)
    out: list[Member | None] = []
    for k in range(n_datasets):
        if not sizes[k]:
            out.append(None)
            continue
        rows = rows_of[k]
        invalid = unidentifiable.single_level(levels_of[k])
        if validate is not None and not invalid:
            try:
                validate(y[rows], None if trials is None else trials[rows])
            except ValueError as err:
                invalid = str(err)
        invalid = invalid or unidentifiable.too_few_rows(int(sizes[k]), levels_of[k]) \
            or ("" if usable[k] else RANK_DEFICIENT)
        out.append(Member(rows, index_of[k], levels_of[k], usable[k], invalid))
    return out


#: How the message of a dataset fit_many did not fit starts (its reason follows).
NOT_FITTED = ("not fitted", "no usable rows")
_LISTED = 20


def failures_message(ids, converged, messages, table: str | None = None) -> str | None:
    """One line on the datasets that did not converge and those not fitted (the model
    cannot be identified from them, or the family refuses their response), or None when
    every dataset converged.  ``table``: the file whose columns say more (the command
    line's ``fits.csv``); None: ``fits.converged`` and ``fits.messages`` (Python)."""
    refused, failed = [], []
    for name, ok, message in zip(ids, converged, messages):
        if not ok:
            (refused if str(message).startswith(NOT_FITTED) else failed).append(str(name))
    if not (refused or failed):
        return None
    n = len(ids)
    parts = [f"{len(failed)} of {n} datasets did not converge ({_listed(failed)})"] \
        if failed else []
    if refused:
        parts.append(f"{len(refused)} of {n} datasets {'was' if len(refused) == 1 else 'were'} not "
                     f"fitted ({_listed(refused)}): each message says why")
    if table is None:
        where = "see fits.converged" + (" and fits.messages" if refused else "")
    else:
        where = (f"see the 'converged' and 'message' columns of {table}" if refused
                 else f"see the 'converged' column of {table}")
    return "; ".join(parts) + f"; {where}"


def warn_failures(fits) -> None:
    """One :class:`~jaxglmm.ConvergenceWarning` for a fit_many run (a :class:`ManyFits`)
    with datasets that did not converge or were not fitted (:func:`failures_message`)."""
    message = failures_message(fits.ids, fits.converged.to_numpy(), fits.messages.to_numpy())
    if message:
        warnings.warn(message, ConvergenceWarning, stacklevel=3)


def _listed(names: list[str]) -> str:
    if len(names) <= _LISTED:
        return ", ".join(names)
    return f"{', '.join(names[:_LISTED])}, ... {len(names) - _LISTED} more"


#: Why a dataset whose fixed-effect matrix is rank deficient is not fitted by fit_many.
RANK_DEFICIENT = ("the fixed-effect matrix of this dataset is rank deficient (a factor level "
                  "absent from it, or confounded columns); fit it alone, where Model.fit "
                  "drops the confounded columns")


class _Identifiability:
    """The checks a Model makes of its random effects (a grouping factor with one level;
    lme4's checkNlevels and checkZdims), made for one dataset of the long design from its
    row count and its levels present per factor: a dataset that cannot identify the model
    is not fitted, with the reason a fit of it alone would raise."""

    def __init__(self, model: Model):
        self.position = {f.group: i for i, f in enumerate(model.structure.factors)}
        self.labels = {t.group: t.levels for t in model.design.terms}
        self.parts = re_term_sizes(model.design)
        self.strict = model.family.residual is not None

    def single_level(self, levels) -> str:
        for part in self.parts:
            for name, _, source in part:
                present = levels[self.position[name]]
                if present.size < 2:
                    return single_level_problem(name, source,
                                                self.labels[name][int(present[0])])
        return ""

    def too_few_rows(self, n: int, levels) -> str:
        for part in self.parts:
            terms = [(name, levels[self.position[name]].size, q, source)
                     for name, q, source in part]
            problem = identifiability_problem(n, terms, self.strict)
            if problem:
                return problem
        return ""


def bucket_key(m: Member) -> tuple:
    return (bucket_size(m.rows.size),) + tuple(bucket_size(lv.size) for lv in m.levels)


def batch_size(count: int, n_devices: int) -> int:
    """Datasets per compiled batch: a power of two (few shapes compile), a multiple of the
    device count (the batch is split across them)."""
    size = 1
    while size < count:
        size *= 2
    return -(-size // n_devices) * n_devices


@dataclass(frozen=True)
class Spec:
    """What every chunk of one fit_many run shares (picklable)."""

    formula: str
    family: Family
    method: str
    options: dict
    structure: ReStructure
    fixef_names: tuple
    model_kw: dict


def model_keywords(kwargs: dict) -> dict:
    return {k: kwargs.pop(k) for k in MODEL_KEYWORDS if k in kwargs}


__all__ = ["DEFAULT_CHUNK_SIZE", "NOT_FITTED", "RANK_DEFICIENT", "failures_message", "warn_failures", "STATEFUL", "Member", "Spec", "batch_size", "bucket_key",
           "bucket_size", "long_table", "memory_chunk_size", "model_keywords",
           "refuse_stateful", "split_design", "unvalidated"]
