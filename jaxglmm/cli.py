"""The ``jaxglmm`` command: ``jaxglmm fit CONFIG.yaml`` and ``jaxglmm fit-many CONFIG.yaml``.

The run is I/O around the library: read and check the config (:mod:`jaxglmm.io.config`), read
the data, build the model, fit, then write every output at once.  Outputs are built in
memory and in a temporary folder beside the output folder, then moved into place, so a run
that stops leaves nothing partial.  Input problems (a bad key, a missing file, an unknown
column, a malformed formula, an unsupported method, a method option of the wrong type) end
the run with one line on stderr and exit status 2; anything else is a bug and shows its
traceback.  A :class:`~jaxglmm.ConvergenceWarning` (a fit that did not converge, a singular
fit, a rank-deficient design) is printed as one line, ``jaxglmm: warning: ...``; with
``--strict`` a fit that did not converge (for ``fit-many``: any dataset) exits with status 3
once its outputs are written.

Examples
--------
>>> main(["fit", "configs/sleepstudy.yaml"])        # doctest: +SKIP
0
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

from . import __version__
from .fit.cache import enable_compilation_cache
from .fit.convergence import ConvergenceWarning
from .io.datasets import load_dataset, read_table
from .many.batch import plan_many
from .many.chunk import fit_chunk
from .many.executor import run_chunks
from .many.plan import DEFAULT_CHUNK_SIZE, failures_message
from .bayes.drivers import BAYES_METHODS
from .model import Model
from .io.config import (BUNDLED_PREFIX, FitConfig, FitManyConfig, PowerConfig, check_options,
                        expand_datasets, is_bundled, load_config)

__all__ = ["main"]

PROG = "jaxglmm"
EXIT_USAGE = 2
EXIT_NOT_CONVERGED = 3   # with --strict


class UsageError(ValueError):
    """An input problem found by the command itself (one line)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxglmm`` command line; returns the exit status: 0, 2 on bad input, 3 with
    ``--strict`` when a fit did not converge."""
    _cpu_devices_for_chains()

    parser = argparse.ArgumentParser(
        prog=PROG, description="Generalized linear mixed models in JAX, run from a YAML config.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("fit", "fit one model to one dataset"),
                       ("fit-many", "fit one model to many same-shape datasets in one call"),
                       ("power", "the power to detect a fixed effect, by simulation")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", metavar="CONFIG.yaml", help="the run config (see README)")
        p.add_argument("-o", "--output", metavar="FOLDER",
                       help="output folder, overriding the config's 'output'")
        p.add_argument("--strict", action="store_true",
                       help="exit with status 3 (after writing the outputs) when a fit did not "
                            "converge")
        p.add_argument("--force", action="store_true",
                       help="remove the outputs of an earlier run in the output folder that "
                            "this run does not write (without it, the run refuses)")
        if name == "fit":
            p.add_argument("--verbose", action="store_true",
                           help="print the objective at each outer iteration of a likelihood fit")
    args = parser.parse_args(argv)
    if not os.environ.get("JAXGLMM_NO_CACHE"):
        try:
            enable_compilation_cache()
        except OSError:   # an unwritable home: run without the cache
            pass
    run = {"fit": _run_fit, "fit-many": _run_fit_many, "power": _run_power}[args.command]
    extra = {"verbose": True} if getattr(args, "verbose", False) else {}
    with _warnings_on_stderr():
        return run(args.config, args.output, args.strict, force=args.force, **extra)


@contextlib.contextmanager
def _warnings_on_stderr():
    """Each :class:`ConvergenceWarning` as one line on stderr, ``jaxglmm: warning: ...``
    (every one, not once per place); other warnings as Python shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", ConvergenceWarning)
        show = warnings.showwarning

        def one_line(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ConvergenceWarning):
                _warn(str(message))
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = one_line
        yield


def _cpu_devices_for_chains(n: int = 4) -> None:
    """Let NUTS chains run in parallel on the CPU, as numpyro's ``set_host_device_count``
    does.  XLA reads the flag when JAX's backend starts, so this acts in a fresh process
    (``jaxglmm ...``) and not when ``main`` is called after JAX has computed anything."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    try:   # importing JAX is fine; the flag only has to be set before its backend starts
        from jax._src import xla_bridge
        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        started = "jax" in sys.modules
    if not started:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    first_line = " ".join(str(message).split())
    print(f"{PROG}: error: {first_line}", file=sys.stderr)
    return status


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {' '.join(message.split())}", file=sys.stderr)


# Input problems: a formula error is a ValueError; a pydantic ValidationError too.
_INPUT_ERRORS = (ValueError, NotImplementedError, FileNotFoundError)


# ----------------------------------------------------------------------------- fit
def _config_model(config_path: str, kind, output: str | None, force: bool = False):
    """(config, model, method, stale) of a one-dataset config (fit, power); input errors
    raise.  ``stale``: an earlier run's outputs to remove once this run's are written."""
    config, stale = _load(config_path, kind, output, force)
    data = _read_data(config.data)
    _check_columns(config, data, config.data)
    model = Model(config.formula, data, config.family, **config.model_kwargs())
    return config, model, _check_method(model, config), stale


def _run_fit(config_path: str, output: str | None, strict: bool = False,
             verbose: bool = False, force: bool = False) -> int:
    try:
        config, model, method, stale = _config_model(config_path, FitConfig, output, force)
    except _INPUT_ERRORS as err:
        return _fail(err)

    likelihood = method in ("reml", "ml", "laplace", "agq")
    fit = model.fit(method, **config.options, **({"verbose": True} if verbose and likelihood else {}))
    try:
        record, tables = _inference(fit, config)
    except _INPUT_ERRORS as err:
        return _fail(err)
    summary = str(fit.summary(ddf=config.ddf))
    files = {
        "fit.json": json.dumps(fit.to_dict() | record, indent=2) + "\n",
        "summary.txt": summary + "\n",
        "ranef.csv": fit.ranef_long().to_csv(index=False),
    } | tables
    if fit.posterior is not None:   # NUTS/VI/MAP draws, as ArviZ InferenceData
        files["draws.nc"] = _netcdf_bytes(fit.posterior)
    try:
        _deliver(config, {"method": method, "link": fit.link}, files, summary, stale)
    except OSError as err:
        return _fail(_unwritable(config.output, err))
    if strict and not fit.converged:
        return _fail(f"the fit did not converge (--strict); its outputs are in {config.output}",
                     EXIT_NOT_CONVERGED)
    return 0


def _inference(fit, config) -> tuple[dict, dict]:
    """What the config asks after the fit (confint, bootstrap, ddf): fit.json's extra keys
    and extra tables."""
    record, tables = {}, {}
    if config.ddf is not None:
        table = fit.coef_table(ddf=config.ddf)
        record["coef_table"] = {"ddf": config.ddf, **{
            name: {k: _json_number(v) for k, v in row.items()} for name, row in table.iterrows()}}
    boot = None
    if config.bootstrap is not None:
        b = config.bootstrap
        boot = fit.bootstrap(n=b.n, seed=b.seed, use_re=b.use_re, progress=False)
        stats = boot.drop(columns="converged")
        record["bootstrap"] = {"n": b.n, "seed": b.seed, "use_re": b.use_re,
                               "converged": int(boot["converged"].sum()),
                               "mean": {k: _json_number(v) for k, v in stats.mean().items()},
                               "sd": {k: _json_number(v) for k, v in stats.std().items()},
                               "seconds": boot.attrs["seconds"]["total"]}
        tables["bootstrap.csv"] = boot.to_csv()
    if config.confint is not None:
        kw = {}
        if config.confint == "bootstrap" and config.bootstrap is not None:
            b = config.bootstrap
            kw = {"n": b.n, "seed": b.seed, "use_re": b.use_re, "progress": False}
        ci = fit.confint(config.confint, level=config.confint_level, **kw)
        record["confint"] = {"method": config.confint, "level": config.confint_level, **{
            name: {"lower": _json_number(r.lower), "upper": _json_number(r.upper)}
            for name, r in ci.iterrows()}}
        tables["confint.csv"] = ci.to_csv(index_label="parameter")
    return record, tables


def _json_number(v):
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None


# ----------------------------------------------------------------------------- power
def _run_power(config_path: str, output: str | None, strict: bool = False,
               force: bool = False) -> int:
    try:
        config, model, method, stale = _config_model(config_path, PowerConfig, output, force)
    except _INPUT_ERRORS as err:
        return _fail(err)
    fit = model.fit(method, **config.options)
    spec = config.power
    try:
        curve = fit.power(spec.term, effect=spec.effect, along=spec.along, sizes=spec.sizes,
                          nsim=spec.nsim, test=spec.test, alpha=spec.alpha, seed=spec.seed,
                          progress=False)
    except _INPUT_ERRORS as err:
        return _fail(err)
    record = {"term": spec.term, "tested": curve.attrs["tested"], "test": spec.test,
              "alpha": spec.alpha, "effect": spec.effect, "along": spec.along,
              "seconds": curve.attrs["seconds"],
              "curve": [{k: _json_number(v) for k, v in row.items()}
                        for row in curve.to_dict("records")]}
    report = (f"power to detect {spec.term} ({spec.test}, alpha {spec.alpha}):\n"
              + pd.DataFrame(curve).to_string(index=False))
    files = {"power.csv": pd.DataFrame(curve).to_csv(index=False),
             "power.json": json.dumps(record, indent=2) + "\n",
             "fit.json": json.dumps(fit.to_dict(), indent=2) + "\n"}
    try:
        _deliver(config, {"method": method, "link": fit.link}, files, report, stale)
    except OSError as err:
        return _fail(_unwritable(config.output, err))
    return 0


# ----------------------------------------------------------------------------- fit-many
def _run_fit_many(config_path: str, output: str | None, strict: bool = False,
                  force: bool = False) -> int:
    """Fit the config's datasets chunk by chunk; each finished chunk is saved in
    ``OUTPUT/chunks/`` at once, so a rerun of a stopped run fits only what is missing."""
    created = False
    with contextlib.ExitStack() as stack:
        try:
            config, stale = _load(config_path, FitManyConfig, output, force)
            if config.format == "parquet" and importlib.util.find_spec("pyarrow") is None:
                raise UsageError("format: parquet needs pyarrow, which is not installed: "
                                 "pip install jaxglmm[parquet] (or use format: csv)")
            folder = Path(config.output) / CHUNKS
            data, by, ids, sources = _many_datasets(config)
            kwargs = config.model_kwargs()
            link = kwargs.pop("link")
            chunk_size = config.chunk_size or _planned_chunk_size(folder) or DEFAULT_CHUNK_SIZE
            plan = plan_many(config.formula, data, config.family, config.method, link, by=by,
                             chunk_size=chunk_size, **kwargs, **config.options)
            ids = ids if ids is not None else list(plan.ids)
            link = plan.spec.family.link.name
            client = _dask_client(config, stack)
            created = not Path(config.output).exists()
            saved = _open_chunks(folder, _fingerprint(config, plan, ids, link, chunk_size))
        except _INPUT_ERRORS as err:
            return _fail(err)
        except OSError as err:
            return _fail(_unwritable(config.output, err))

        todo = [k for k in range(len(plan.chunks)) if k not in saved]
        if saved:
            print(f"{PROG}: resuming from {folder}: {len(saved)} of {len(plan.chunks)} chunks "
                  f"already fitted, {len(todo)} to go", file=sys.stderr)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():   # one line for the whole run, below
                warnings.simplefilter("ignore", ConvergenceWarning)
                run_chunks(_fit_chunk_table, _Payloads(plan, todo), executor=client,
                           progress=config.progress, desc="datasets",
                           sizes=[len(plan.chunks[k]) for k in todo],
                           done=lambda j, table: _save_chunk(folder, plan, ids, todo[j],
                                                             table, config.format))
        except _INPUT_ERRORS as err:
            _discard_if_empty(folder, Path(config.output) if created else None)
            return _fail(err)
        except OSError as err:   # a chunk that could not be saved
            return _fail(_unwritable(config.output, err))
        except KeyboardInterrupt:
            done = len(_chunk_files(folder))
            print(f"\n{PROG}: interrupted; {done} of {len(plan.chunks)} chunks are saved in "
                  f"{folder}: run the same command again to fit the rest", file=sys.stderr)
            return 130
        seconds = time.perf_counter() - start

    try:
        table = _read_chunks(folder, plan, ids)
    except _INPUT_ERRORS as err:
        return _fail(err)
    update = {"method": plan.method, "link": link, "chunk_size": chunk_size}
    if sources is not None:
        update["datasets"] = sources  # a glob pattern expanded: the config says what ran
    name = f"fits.{config.format}"
    files = {name: _table_bytes(table, config.format) if config.format == "parquet"
             else table.to_csv(index=False)}
    report = _many_report(table, plan, seconds, len(todo))
    try:
        _deliver(config, update, files, report, stale)
    except OSError as err:
        return _fail(_unwritable(config.output, err))
    shutil.rmtree(folder, ignore_errors=True)   # fits.* holds every chunk now
    failed = [str(d) for d, ok in zip(table["dataset"], table["converged"]) if not ok]
    message = failures_message(table["dataset"], table["converged"], table["message"], name)
    if message:
        _warn(message)
    if strict and failed:
        return _fail(f"{len(failed)} of {len(table)} datasets did not converge (--strict); "
                     f"the outputs are in {config.output}", EXIT_NOT_CONVERGED)
    return 0


def _many_datasets(config: FitManyConfig):
    """``(data, by, ids, sources)`` for :func:`plan_many`: one dataset per file (a list of
    frames; ``ids`` their names, ``sources`` the files), or one long table split ``by`` the
    ``split_by`` column (``ids`` and ``sources`` None: the plan labels them by value)."""
    if config.datasets is not None:
        sources = expand_datasets(config)
        frames = [_read_data(s) for s in sources]
        for source, frame in zip(sources, frames):
            _check_columns(config, frame, source)
        return frames, None, _dataset_ids(sources), sources
    data = _read_data(config.data)
    _check_columns(config, data, config.data)
    if data[config.split_by].isna().any():
        raise UsageError(f"split_by column {config.split_by!r} has missing values")
    return data, config.split_by, None, None


def _dataset_ids(sources: list[str]) -> list[str]:
    """A file's name without its extension; the full source when two names clash."""
    stems = [s[len(BUNDLED_PREFIX):] if is_bundled(s) else Path(s).stem for s in sources]
    return stems if len(set(stems)) == len(stems) else list(sources)


def _dask_client(config: FitManyConfig, stack: contextlib.ExitStack):
    """A Dask client connected to the config's scheduler (closed when the run ends), or
    None: the chunks run in this process."""
    if config.executor is None:
        return None
    address = config.executor.scheduler
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("config key 'executor' needs dask.distributed, which is not "
                         "installed: pip install jaxglmm[dask]") from None
    try:
        client = Client(address)
    except (OSError, TimeoutError, ValueError) as err:
        raise UsageError(f"cannot reach the Dask scheduler at {address} (config key "
                         f"'executor.scheduler'): {err}") from None
    stack.callback(client.close)
    return client


def _fit_chunk_table(payload) -> pd.DataFrame:
    """One chunk's fits as their wide table (what a Dask worker sends back: small)."""
    return fit_chunk(payload).wide()


class _Payloads:
    """The payloads of the chunks still to fit, each built when it is needed."""

    def __init__(self, plan, todo: list[int]):
        self.plan, self.todo = plan, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int):
        return self.plan.payload(self.todo[j])


def _many_report(table: pd.DataFrame, plan, seconds: float, fitted: int) -> str:
    fixef = table[list(plan.spec.fixef_names)]
    spread = pd.DataFrame({"mean": fixef.mean(), "sd": fixef.std(ddof=1),
                           "min": fixef.min(), "max": fixef.max()})
    n_chunks = len(plan.chunks)
    chunks = f"in {n_chunks} chunks" if fitted == n_chunks else \
        f"for {fitted} of {n_chunks} chunks; {n_chunks - fitted} fitted by an earlier run"
    lines = [f"{plan.spec.formula}  ({plan.spec.family.name}, {plan.method})",
             f"{len(table)} datasets, {int(table['converged'].sum())} converged, "
             f"{seconds:.2f} s {chunks}",
             "", "Fixed effects across datasets:", spread.to_string(float_format="{:.6g}".format)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- fit-many chunks
# OUTPUT/chunks/ holds plan.json (what the run is) and one file per finished chunk, each
# written whole (a temporary file in the same folder, fsync, os.replace): a file there is a
# finished chunk, and a run killed at any moment leaves only finished chunks and, at worst,
# a temporary file, removed by the next run.
CHUNKS = "chunks"
_PLAN = "plan.json"
_CHUNK_FILE = re.compile(r"chunk-(\d+)\.(csv|parquet)")
# pandas 3 reads a float written by to_csv back exactly by default; pandas 2 needs asking.
_EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def _fingerprint(config: FitManyConfig, plan, ids: list[str], link: str,
                 chunk_size: int) -> dict:
    """What must be the same for a rerun to reuse saved chunks: the model, the method and
    its options, the datasets (labels in order, and a digest of their values) and how they
    are split into chunks."""
    table = plan.table
    digest = hashlib.sha256(json.dumps([str(c) for c in table.columns]).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    model = config.model_kwargs()
    model.pop("link")
    record = {"jaxglmm_version": __version__, "formula": config.formula,
              "family": plan.spec.family.name, "link": link, "method": plan.method,
              "options": config.options, **model, "chunk_size": chunk_size,
              "datasets": list(ids), "data": digest.hexdigest()}
    return json.loads(json.dumps(record, default=str))   # as it reads back from plan.json


def _planned_chunk_size(folder: Path) -> int | None:
    """The chunk size of a run saved in ``folder`` (a rerun with no ``chunk_size`` key goes
    on with it)."""
    try:
        size = json.loads((folder / _PLAN).read_text(encoding="utf-8")).get("chunk_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _open_chunks(folder: Path, fingerprint: dict) -> dict[int, Path]:
    """The saved chunks of this run (``{chunk: file}``), after checking that ``folder``
    holds this run's plan; a new folder gets the plan written first."""
    plan_file = folder / _PLAN
    if plan_file.is_file():
        try:
            saved = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot read {plan_file} ({err}); delete {folder} to start "
                             "over") from None
        differ = [k for k in fingerprint if not isinstance(saved, dict)
                  or saved.get(k) != fingerprint[k]]
        if differ:
            raise UsageError(
                f"{folder} holds the chunks of a different fit-many run (its "
                f"{', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} from "
                f"this config's): choose another output folder (-o FOLDER), or delete "
                f"{folder} to start over")
    elif _chunk_files(folder):
        raise UsageError(f"{folder} holds chunk files but no {_PLAN}, so they cannot be "
                         f"checked against this run: choose another output folder (-o "
                         f"FOLDER), or delete {folder} to start over")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(plan_file, (json.dumps(fingerprint, indent=1) + "\n").encode())
    for stale in folder.iterdir():       # the temporary file of a killed write
        if stale.name.startswith(".") and ".tmp-" in stale.name:
            stale.unlink(missing_ok=True)
    return _chunk_files(folder)


def _chunk_files(folder: Path) -> dict[int, Path]:
    found = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = _CHUNK_FILE.fullmatch(path.name)
            if match:
                found.setdefault(int(match.group(1)), path)
    return found


def _save_chunk(folder: Path, plan, ids: list[str], k: int, table: pd.DataFrame,
                fmt: str) -> None:
    """Chunk ``k``'s table, labelled with the run's dataset ids, written whole."""
    table = table.copy()
    table["dataset"] = [ids[i] for i in plan.chunks[k]]
    content = _table_bytes(table, fmt) if fmt == "parquet" else \
        table.to_csv(index=False).encode("utf-8")
    _write_atomic(folder / f"chunk-{k:06d}.{fmt}", content)


def _read_chunks(folder: Path, plan, ids: list[str]) -> pd.DataFrame:
    """The saved chunks as one table, in dataset order (each checked to be the chunk)."""
    files = _chunk_files(folder)
    floats = list(plan.spec.fixef_names) + ["loglik"]
    parts = []
    for k, chunk in enumerate(plan.chunks):
        path = files.get(k)
        if path is None:
            raise UsageError(f"chunk {k} is missing from {folder}; run again to fit it")
        if path.suffix == ".parquet":
            part = pd.read_parquet(path)
        else:
            part = pd.read_csv(path, dtype={"dataset": str, "message": str,
                                            **{c: float for c in floats}},
                               keep_default_na=False, na_values={c: [""] for c in floats},
                               **_EXACT_FLOATS)
        if part["dataset"].tolist() != [ids[i] for i in chunk]:
            raise UsageError(f"{path} does not hold chunk {k}'s datasets; delete {folder} "
                             "to start over")
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _table_bytes(table: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        return buffer.getvalue()
    return table.to_csv(index=False).encode("utf-8")


def _write_atomic(path: Path, content: bytes) -> None:
    """``content`` into ``path`` whole or not at all: a temporary file beside it, flushed
    to disk, then renamed over it."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(temp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):   # the rename itself, on file systems that allow it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _discard_if_empty(folder: Path, created: Path | None) -> None:
    """After a failed run: a chunks folder with no chunk in it goes (and the output folder,
    if this run made it and it is now empty)."""
    if folder.is_dir() and not _chunk_files(folder):
        shutil.rmtree(folder, ignore_errors=True)
        if created is not None:
            with contextlib.suppress(OSError):
                created.rmdir()


# ----------------------------------------------------------------------------- shared steps
def _check_method(model: Model, config) -> str:
    """The method (the config's, or the model's default) after checking its options' types
    (config) and that the model can use it with these options (model)."""
    method = (config.method or model.default_method()).lower()
    check_options(method, config.options)
    return model.check_method(method, config.options)


def _load(config_path: str, kind, output: str | None, force: bool = False):
    """``(config, stale)``: the checked config, and the outputs of an earlier run in its
    output folder that this run does not write (removed once this run's are in place:
    only with ``force``, else the run is refused here, before anything is fitted)."""
    config = load_config(config_path, kind)
    if output is not None:
        config = config.model_copy(update={"output": str(Path(output).expanduser().resolve())})
    out = Path(config.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")
    _check_writable(out)
    stale = _stale_outputs(out, _outputs_of(config))
    if stale and not force:
        raise UsageError(
            f"the output folder {out} holds {', '.join(stale)} from an earlier run, which "
            f"this run would not replace: rerun with --force to remove {'it' if len(stale) == 1 else 'them'}, "
            "or choose another output folder (-o FOLDER)")
    return config, stale


#: Every file (and folder) a jaxglmm run writes into its output folder.  Only these are
#: ever removed (--force); any other file there is left alone.
OUTPUT_NAMES = ("fit.json", "summary.txt", "ranef.csv", "confint.csv", "bootstrap.csv",
                "draws.nc", "power.csv", "power.json", "fits.csv", "fits.parquet",
                "config.yaml", "chunks")


def _outputs_of(config) -> set[str]:
    """The names a run of ``config`` writes into its output folder (fit-many's
    ``chunks`` too: its own saved state, which a rerun resumes from)."""
    if isinstance(config, FitManyConfig):
        return {f"fits.{config.format}", "config.yaml", CHUNKS}
    if isinstance(config, PowerConfig):
        return {"power.csv", "power.json", "fit.json", "config.yaml"}
    names = {"fit.json", "summary.txt", "ranef.csv", "config.yaml"}
    if config.confint is not None:
        names.add("confint.csv")
    if config.bootstrap is not None:
        names.add("bootstrap.csv")
    if config.resolved_method() in BAYES_METHODS:
        names.add("draws.nc")
    return names


def _stale_outputs(out: Path, written: set[str]) -> list[str]:
    if not out.is_dir():
        return []
    return [name for name in OUTPUT_NAMES
            if name not in written and (out / name).exists()]


def _check_writable(out: Path) -> None:
    """The output folder can be written, or created in its nearest existing parent."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"the output folder {out} cannot be created: {probe} is a file, "
                         "not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "written" if probe == out else f"created (no permission to write in {probe})"
        raise UsageError(f"the output folder {out} cannot be {what}")


def _unwritable(out, err: OSError) -> str:
    reason = err.strerror or str(err)
    where = f": {err.filename}" if err.filename else ""
    return f"cannot write the outputs to {out} ({reason}{where})"


def _read_data(source: str) -> pd.DataFrame:
    if is_bundled(source):
        return load_dataset(source[len(BUNDLED_PREFIX):])
    if os.path.isdir(source):
        raise UsageError(f"data {source} is a folder, not a CSV or Parquet file")
    return read_table(source)


def _check_columns(config, data: pd.DataFrame, source: str) -> None:
    """Columns named by config keys (the formula's are checked by the model)."""
    for key, column in config.config_columns():
        if column not in data.columns:
            raise UsageError(f"config key {key!r} names column {column!r}, which is not in "
                             f"the data {source} (columns: {', '.join(map(str, data.columns))})")


def _deliver(config, update: dict, files: dict[str, str | bytes], report: str,
             stale: Sequence[str] = ()) -> None:
    """Write ``files`` and the resolved config (``update``: what the run chose) into the
    output folder at once, remove ``stale`` (an earlier run's outputs that this run does
    not write, with --force), then print ``report`` and where the outputs went."""
    files = files | {"config.yaml": _dump_config(config.model_copy(update=update))}
    _write_folder(Path(config.output), files, stale)
    print(report)
    print(f"\n{PROG}: wrote {', '.join(files)} to {config.output}")


def _netcdf_bytes(idata) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "draws.nc"
        idata.to_netcdf(str(path))
        return path.read_bytes()


def _dump_config(config) -> str:
    record = config.model_dump(mode="json")
    # Where the data come from goes first; fit-many's unused way of giving them is left out.
    sources = ("data", "datasets", "split_by")
    ordered = {k: record[k] for k in sources if record.get(k) is not None}
    ordered |= {k: v for k, v in record.items() if k not in sources}
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


def _write_folder(output: Path, files: dict[str, str], stale: Sequence[str] = ()) -> None:
    """Write ``files`` into ``output`` all at once: into a temporary folder beside it, then
    renamed (a new folder), or into a temporary folder inside it, then moved file by file
    (an existing one: other files kept, ``stale`` ones removed after)."""
    exists = output.is_dir()
    if not exists:
        output.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would become the output folder's.
    tag = f"partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = output / f".{tag}" if exists else output.parent / f".{output.name}.{tag}"
    staging.mkdir()
    try:
        for name, content in files.items():
            if isinstance(content, bytes):
                (staging / name).write_bytes(content)
            else:
                (staging / name).write_text(content, encoding="utf-8")
        if exists:
            for name in files:
                os.replace(staging / name, output / name)
        else:
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in stale:
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
