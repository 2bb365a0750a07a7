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
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import jax
from ._lazy import pandas as pd
import yaml

from . import __version__
from .fit.convergence import ConvergenceWarning
from .io.datasets import load_dataset, read_table
from .many.batch import fit_plan, plan_many
from .many.checkpoint import Checkpoint, saved_chunk_size
from .many.plan import DEFAULT_CHUNK_SIZE, failures_message
from .methods import get_method
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
    does.  JAX reads the count when its backend starts, so this acts in a fresh process
    (``jaxglmm ...``) and not when ``main`` is called after JAX has computed anything."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") \
            or jax.config.jax_num_cpu_devices >= 0:   # the user chose a count
        return
    try:   # JAX refuses the option once its backend has started
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass


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

    likelihood = not get_method(method).bayesian
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
#: fit-many's checkpoint (jaxglmm.many.checkpoint) inside the output folder, removed once
#: fits.csv holds every chunk.
CHUNKS = "chunks"


def _run_fit_many(config_path: str, output: str | None, strict: bool = False,
                  force: bool = False) -> int:
    """Fit the config's datasets chunk by chunk, as ``jg.fit_many(..., checkpoint=
    OUTPUT/chunks)`` does: each finished chunk is saved at once, so a rerun of a stopped
    run fits only what is missing."""
    created = False
    with contextlib.ExitStack() as stack:
        try:
            config, stale = _load(config_path, FitManyConfig, output, force)
            if config.format == "parquet" and importlib.util.find_spec("pyarrow") is None:
                raise UsageError("format: parquet needs pyarrow, which is not installed: "
                                 "pip install jaxglmm[parquet] (or use format: csv)")
            folder = Path(config.output) / CHUNKS
            data, by, sources = _many_datasets(config)
            kwargs = config.model_kwargs()
            link = kwargs.pop("link")
            chunk_size = config.chunk_size or saved_chunk_size(folder) or DEFAULT_CHUNK_SIZE
            plan = plan_many(config.formula, data, config.family, config.method, link, by=by,
                             chunk_size=chunk_size, **kwargs, **config.options)
            client = _dask_client(config, stack)
            created = not Path(config.output).exists()
            store = Checkpoint(folder, plan, elsewhere="another output folder (-o FOLDER)")
        except _INPUT_ERRORS as err:
            return _fail(err)
        except OSError as err:
            return _fail(_unwritable(config.output, err))

        todo = store.missing()
        if store.saved:
            print(f"{PROG}: resuming from {folder}: {len(store.saved)} of {len(plan.chunks)} "
                  f"chunks already fitted, {len(todo)} to go", file=sys.stderr)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():   # one line for the whole run, below
                warnings.simplefilter("ignore", ConvergenceWarning)
                fits = fit_plan(plan, executor=client, progress=config.progress,
                                checkpoint=store)
        except _INPUT_ERRORS as err:
            if store.discard_if_empty() and created:
                with contextlib.suppress(OSError):
                    Path(config.output).rmdir()
            return _fail(err)
        except OSError as err:   # a chunk that could not be saved
            return _fail(_unwritable(config.output, err))
        except KeyboardInterrupt:
            print(f"\n{PROG}: interrupted; {len(store.saved)} of {len(plan.chunks)} chunks are "
                  f"saved in {folder}: run the same command again to fit the rest",
                  file=sys.stderr)
            return 130
        seconds = time.perf_counter() - start

    table = fits.wide()
    update = {"method": plan.method, "link": plan.spec.family.link.name,
              "chunk_size": plan.chunk_size}
    if sources is not None:
        update["datasets"] = sources  # a glob pattern expanded: the config says what ran
    name = f"fits.{config.format}"
    files = {name: _parquet_bytes(table) if config.format == "parquet"
             else table.to_csv(index=False)}
    report = _many_report(table, plan, seconds, len(todo))
    try:
        _deliver(config, update, files, report, stale)
    except OSError as err:
        return _fail(_unwritable(config.output, err))
    store.remove()   # fits.* holds every chunk now
    failed = [str(d) for d, ok in zip(table["dataset"], table["converged"]) if not ok]
    message = failures_message(table["dataset"], table["converged"], table["message"], name)
    if message:
        _warn(message)
    if strict and failed:
        return _fail(f"{len(failed)} of {len(table)} datasets did not converge (--strict); "
                     f"the outputs are in {config.output}", EXIT_NOT_CONVERGED)
    return 0


def _many_datasets(config: FitManyConfig):
    """``(data, by, sources)`` for :func:`plan_many`: one dataset per file (a dict of
    frames by name; ``sources`` the files), or one long table split ``by`` the ``split_by``
    column (``sources`` None: the plan labels the datasets by value)."""
    if config.datasets is not None:
        sources = expand_datasets(config)
        frames = [_read_data(s) for s in sources]
        for source, frame in zip(sources, frames):
            _check_columns(config, frame, source)
        return dict(zip(_dataset_ids(sources), frames)), None, sources
    data = _read_data(config.data)
    _check_columns(config, data, config.data)
    if data[config.split_by].isna().any():
        raise UsageError(f"split_by column {config.split_by!r} has missing values")
    return data, config.split_by, None


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


def _parquet_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


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
    if get_method(config.resolved_method()).bayesian:
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
