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
import json
import tempfile
import os
import shutil
import sys
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
from .many import fit_many
from .model import Model
from .io.config import (BUNDLED_PREFIX, FitConfig, FitManyConfig, check_options,
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
                       ("fit-many", "fit one model to many same-shape datasets in one call")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", metavar="CONFIG.yaml", help="the run config (see README)")
        p.add_argument("-o", "--output", metavar="FOLDER",
                       help="output folder, overriding the config's 'output'")
        p.add_argument("--strict", action="store_true",
                       help="exit with status 3 (after writing the outputs) when a fit did not "
                            "converge")
    args = parser.parse_args(argv)
    if not os.environ.get("JAXGLMM_NO_CACHE"):
        try:
            enable_compilation_cache()
        except OSError:   # an unwritable home: run without the cache
            pass
    run = _run_fit if args.command == "fit" else _run_fit_many
    with _warnings_on_stderr():
        return run(args.config, args.output, args.strict)


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
def _run_fit(config_path: str, output: str | None, strict: bool = False) -> int:
    try:
        config = _load(config_path, FitConfig, output)
        data = _read_data(config.data)
        _check_columns(config, data, config.data)
        model = Model(config.formula, data, config.family, **config.model_kwargs())
        method = _check_method(model, config)
    except _INPUT_ERRORS as err:
        return _fail(err)

    fit = model.fit(method, **config.options)
    summary = str(fit.summary())
    files = {
        "fit.json": json.dumps(fit.to_dict(), indent=2) + "\n",
        "summary.txt": summary + "\n",
        "ranef.csv": fit.ranef_long().to_csv(index=False),
    }
    if fit.posterior is not None:   # NUTS/VI/MAP draws, as ArviZ InferenceData
        files["draws.nc"] = _netcdf_bytes(fit.posterior)
    _deliver(config, {"method": method, "link": fit.link}, files, summary)
    if strict and not fit.converged:
        return _fail(f"the fit did not converge (--strict); its outputs are in {config.output}",
                     EXIT_NOT_CONVERGED)
    return 0


# ----------------------------------------------------------------------------- fit-many
def _run_fit_many(config_path: str, output: str | None, strict: bool = False) -> int:
    try:
        config = _load(config_path, FitManyConfig, output)
        ids, frames, sources = _many_datasets(config)
        first = Model(config.formula, frames[0], config.family, **config.model_kwargs())
        method = _check_method(first, config)
        kwargs = config.model_kwargs()
        link = kwargs.pop("link")
        # fit_many raises ValueError when the datasets do not share one shape.
        fits = fit_many(config.formula, frames, config.family, method, link, **kwargs,
                        **config.options)
    except _INPUT_ERRORS as err:
        return _fail(err)

    table = _fits_table(ids, fits)
    update = {"method": method, "link": first.family.link.name}
    if sources is not None:
        update["datasets"] = sources  # a glob pattern expanded: the config says what ran
    files = {"fits.csv": table.to_csv(index=False)}
    _deliver(config, update, files, _many_report(table, fits, method))
    failed = [str(d) for d, ok in zip(table["dataset"], table["converged"]) if not ok]
    if failed:
        _warn(f"{len(failed)} of {len(table)} datasets did not converge ({', '.join(failed)}); "
              "see the 'converged' column of fits.csv")
    if strict and failed:
        return _fail(f"{len(failed)} of {len(table)} datasets did not converge (--strict); "
                     f"the outputs are in {config.output}", EXIT_NOT_CONVERGED)
    return 0


def _many_datasets(config: FitManyConfig):
    """``(ids, frames, sources)``: one dataset per file (``sources`` lists them), or one per
    value of ``split_by`` (``sources`` is None)."""
    if config.datasets is not None:
        sources = expand_datasets(config)
        frames = [_read_data(s) for s in sources]
        for source, frame in zip(sources, frames):
            _check_columns(config, frame, source)
        return _dataset_ids(sources), frames, sources
    data = _read_data(config.data)
    _check_columns(config, data, config.data)
    column = data[config.split_by]
    if column.isna().any():
        raise UsageError(f"split_by column {config.split_by!r} has missing values")
    groups = data.groupby(config.split_by, sort=False, dropna=False)
    ids = [str(key) for key in groups.groups]
    frames = [frame.reset_index(drop=True) for _, frame in groups]
    return ids, frames, None


def _dataset_ids(sources: list[str]) -> list[str]:
    """A file's name without its extension; the full source when two names clash."""
    stems = [s[len(BUNDLED_PREFIX):] if is_bundled(s) else Path(s).stem for s in sources]
    return stems if len(set(stems)) == len(stems) else list(sources)


def _fits_table(ids: list[str], fits) -> pd.DataFrame:
    table = fits.fixef
    table.insert(0, "dataset", ids)
    table["loglik"] = fits.loglik
    table["converged"] = fits.converged
    return table


def _many_report(table: pd.DataFrame, fits, method: str) -> str:
    fixef = table.drop(columns=["dataset", "loglik", "converged"])
    spread = pd.DataFrame({"mean": fixef.mean(), "sd": fixef.std(ddof=1),
                           "min": fixef.min(), "max": fixef.max()})
    model = fits.models[0]
    lines = [f"{model.formula}  ({model.family.name}, {method})",
             f"{len(table)} datasets, {int(table['converged'].sum())} converged, "
             f"{fits.seconds:.2f} s in one call",
             "", "Fixed effects across datasets:", spread.to_string(float_format="{:.6g}".format)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- shared steps
def _check_method(model: Model, config) -> str:
    """The method (the config's, or the model's default) after checking its options' types
    (config) and that the model can use it with these options (model)."""
    method = (config.method or model.default_method()).lower()
    check_options(method, config.options)
    return model.check_method(method, config.options)


def _load(config_path: str, kind, output: str | None):
    config = load_config(config_path, kind)
    if output is not None:
        config = config.model_copy(update={"output": str(Path(output).expanduser().resolve())})
    out = Path(config.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")
    return config


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


def _deliver(config, update: dict, files: dict[str, str | bytes], report: str) -> None:
    """Write ``files`` and the resolved config (``update``: what the run chose) into the
    output folder at once, then print ``report`` and where the outputs went."""
    files = files | {"config.yaml": _dump_config(config.model_copy(update=update))}
    _write_folder(Path(config.output), files)
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


def _write_folder(output: Path, files: dict[str, str]) -> None:
    """Write ``files`` into ``output`` all at once: into a temporary folder beside it, then
    renamed (a new folder) or moved file by file (an existing one, other files kept)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would become the output folder's.
    staging = output.parent / f".{output.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for name, content in files.items():
            if isinstance(content, bytes):
                (staging / name).write_bytes(content)
            else:
                (staging / name).write_text(content, encoding="utf-8")
        if output.is_dir():
            for name in files:
                os.replace(staging / name, output / name)
        else:
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
