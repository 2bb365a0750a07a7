"""The YAML run configs of ``jaxglmm fit`` and ``jaxglmm fit-many`` (docs/INTERFACE.md).

A config is a pydantic model with ``extra="forbid"``: a misspelt key stops the run instead of
being ignored.  :func:`load_config` reads the file, validates it and resolves every relative
path against the config file's folder, so a config runs the same from any directory.

Data sources (the ``data`` key, and each entry of ``datasets``):

* a CSV or Parquet file, ``data: data/cbpp.csv`` (relative to the config file);
* a bundled dataset, ``data: bundled:sleepstudy`` (see :func:`jaxglmm.list_datasets`).

``fit-many`` takes its datasets in one of two ways:

* ``datasets:`` a list of files, or one glob pattern (``sims/sim_*.csv``), one dataset per
  file, in natural order (``sim_2`` before ``sim_10``);
* ``data:`` one long table plus ``split_by: sim``, one dataset per value of that column, in
  order of first appearance (the layout of ``simulate()`` output stacked with a replicate id).

The YAML is read by :class:`ConfigLoader`, PyYAML's safe loader with two changes: a key that
appears twice in one mapping is an error (PyYAML keeps the last), and under ``levels`` the
column names and the labels keep their text (YAML 1.1 reads ``[no, yes]`` as booleans).
Method ``options`` are checked by :func:`check_options`, one pydantic model per method, made
from the method's option spec (:mod:`jaxglmm.methods`).

Examples
--------
>>> cfg = FitConfig(data="bundled:sleepstudy", formula="Reaction ~ Days + (Days | Subject)",
...                 method="reml", output="out/sleepstudy")
>>> cfg.family, cfg.data
('gaussian', 'bundled:sleepstudy')
"""
from __future__ import annotations

import difflib
import glob
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model,
                      field_validator, model_validator)

from ..families import get_family
from ..methods import METHOD_NAMES, METHODS, Method, default_method, get_method
from .datasets import list_datasets
from .loader import ConfigLoader, RepeatedKey

__all__ = ["BUNDLED_PREFIX", "FitConfig", "FitManyConfig", "PowerConfig", "ExecutorConfig",
           "FIT_MANY_KEYS", "BootstrapSpec", "PowerSpec",
           "ConfigError", "ConfigLoader",
           "load_config", "check_options", "METHOD_OPTIONS", "format_validation_error",
           "is_bundled", "expand_datasets"]

#: Prefix of a bundled dataset in ``data``: ``bundled:sleepstudy``.
BUNDLED_PREFIX = "bundled:"

MethodName = Literal[METHOD_NAMES]
_LIKELIHOOD = ", ".join(m.name for m in METHODS if not m.bayesian)
Label = str | int | float | bool


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the problem."""


def is_bundled(source: str) -> bool:
    """Whether a data source names a bundled dataset (``bundled:NAME``)."""
    return source.startswith(BUNDLED_PREFIX)


def _check_source(source: str) -> str:
    if not source.strip():
        raise ValueError("a data source must be a file path or 'bundled:NAME'")
    if is_bundled(source):
        name = source[len(BUNDLED_PREFIX):]
        names = list_datasets()
        if name not in names:
            raise ValueError(f"unknown bundled dataset {name!r}; choose one of {names}")
    return source


# ----------------------------------------------------------------------------- method options
class _Options(BaseModel):
    """The options a method takes, with their types.  ``strict``: no int from a float or a
    bool, no number from a string.  Names a method does not take are refused before, by
    the method's own check, which lists what it takes."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


def _options_model(method: Method) -> type[_Options]:
    """The pydantic model of a method's options, made from its record's option spec."""
    fields = {o.name: (o.type, Field(o.default, description=o.doc, **o.bounds))
              for o in method.options}
    return create_model(f"{method.name.capitalize()}Options", __base__=_Options,
                        __doc__=f"The options of method {method.name!r} "
                                "(:mod:`jaxglmm.methods`).", **fields)


#: The options model of each method, made from :data:`jaxglmm.methods.METHODS`.
METHOD_OPTIONS: dict[str, type[_Options]] = {m.name: _options_model(m) for m in METHODS}
NutsOptions, ViOptions = METHOD_OPTIONS["nuts"], METHOD_OPTIONS["vi"]
MapOptions, AgqOptions = METHOD_OPTIONS["map"], METHOD_OPTIONS["agq"]


def check_options(method: str, options: dict) -> None:
    """Check a method's ``options``: names the method does not take (worded as
    :meth:`jaxglmm.methods.Method.check_options` words them), then the types, each bad one
    named (``config key 'options.chains': expected an integer, got 'two'``); a
    :class:`ConfigError` either way."""
    spec = get_method(method)
    try:
        spec.check_options(options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    kind = METHOD_OPTIONS[spec.name]
    try:
        kind.model_validate(options)
    except ValidationError as err:
        order = {name: i for i, name in enumerate(options)}   # as the config lists them
        errors = sorted(err.errors(), key=lambda e: order.get(e["loc"][0], len(order)))
        raise ConfigError("; ".join(_describe_option(e, kind) for e in errors)) from None


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "dict_type": "a mapping of names to prior strings"}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _describe_option(error: dict, kind: type[_Options]) -> str:
    loc = ".".join(str(p) for p in ("options",) + tuple(error["loc"]))
    value, type_of = error["input"], error["type"]
    if type_of in _EXPECTED:
        expected = _EXPECTED[type_of]
    elif type_of == "literal_error":
        expected = error["ctx"]["expected"]
    elif type_of in _BOUNDS:
        sign, bound = _BOUNDS[type_of]
        field = kind.model_fields[error["loc"][0]]
        what = "an integer" if int in (field.annotation, *getattr(field.annotation, "__args__",
                                                                    ())) else "a number"
        expected = f"{what} {sign} {error['ctx'][bound]}"
    else:
        return f"config key {loc!r}: {error['msg'][:1].lower()}{error['msg'][1:]}"
    return f"config key {loc!r}: expected {expected}, got {_yaml_repr(value)}"


def _yaml_repr(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


class _ModelSpec(BaseModel):
    """Keys shared by ``fit`` and ``fit-many``: the model, the method and the output folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    formula: str
    family: str = "gaussian"
    link: str | None = None
    method: MethodName | None = None
    categorical: list[str] = []
    levels: dict[str, list[Label]] = {}
    weights: str | None = None
    dpars: dict[str, str] = {}
    options: dict[str, Any] = {}
    output: str | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _lower_method(cls, value):
        return value.lower() if isinstance(value, str) else value

    @field_validator("categorical", mode="before")
    @classmethod
    def _no_columns(cls, value):
        """``categorical: null`` is no column; ``categorical: period`` is one."""
        return [] if value is None else [value] if isinstance(value, str) else value

    @field_validator("levels", "dpars", "options", mode="before")
    @classmethod
    def _empty_mapping(cls, value):
        return {} if value is None else value

    @field_validator("family")
    @classmethod
    def _known_family(cls, value):
        get_family(value)  # ValueError listing the registered families
        return value

    @model_validator(mode="after")
    def _known_link(self):
        if self.link is not None:
            get_family(self.family, self.link)  # ValueError listing the family's links
        exact = get_family(self.family, self.link).exact_lmm
        # as the method's own check says it, but before the data are read
        message = self.method and get_method(self.method).refusal(exact, self.family)
        if message:
            raise ValueError(message)
        return self

    def resolved_method(self) -> str:
        """The method the run will use: the config's, or the family's default (reml for
        gaussian with the identity link, laplace otherwise)."""
        if self.method is not None:
            return self.method
        return default_method(self._exact_lmm()).name

    def _exact_lmm(self) -> bool:
        return get_family(self.family, self.link).exact_lmm and not self.dpars

    def model_kwargs(self) -> dict:
        """Keyword arguments of :class:`jaxglmm.Model` besides formula, data and family."""
        return {"link": self.link, "categorical": tuple(self.categorical),
                "levels": {k: list(v) for k, v in self.levels.items()} or None,
                "weights": self.weights, "dpars": dict(self.dpars) or None}

    def config_columns(self) -> list[tuple[str, str]]:
        """``(key, column)`` for every data column the config names outside the formula."""
        cols = [("categorical", c) for c in self.categorical]
        cols += [("levels", c) for c in self.levels]
        if self.weights:
            cols.append(("weights", self.weights))
        return cols


class BootstrapSpec(BaseModel):
    """``bootstrap: N`` or ``bootstrap: {n: N, seed: S, use_re: sample | conditional}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1000, ge=1, strict=True)
    seed: int | None = None
    use_re: Literal["sample", "conditional"] = "sample"


class PowerSpec(BaseModel):
    """``power:`` of ``jaxglmm power`` (the arguments of ``fit.power``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    term: str
    effect: float | None = None
    along: str | None = None
    sizes: list[int] | None = None
    nsim: int = Field(1000, ge=1, strict=True)
    test: Literal["lrt", "wald", "satterthwaite"] = "lrt"
    alpha: float = Field(0.05, gt=0, lt=1)
    seed: int | None = None


class FitConfig(_ModelSpec):
    """Config of ``jaxglmm fit``: one model on one dataset, and what to infer after it:
    ``confint`` (wald | profile | bootstrap; ``confint_level``, default 0.95),
    ``bootstrap`` (replicates, or a mapping n/seed/use_re) and ``ddf`` (satterthwaite |
    kenward-roger: the coefficient table's denominator df), each landing in ``fit.json``."""

    data: str
    confint: Literal["wald", "profile", "bootstrap"] | None = None
    confint_level: float = Field(0.95, gt=0, lt=1, strict=True)
    bootstrap: BootstrapSpec | None = None
    ddf: Literal["satterthwaite", "kenward-roger"] | None = None

    @model_validator(mode="after")
    def _inference_fits_method(self):
        """What is asked after the fit must suit the method and family, checked before
        anything is fitted (not after the chains)."""
        method = self.resolved_method()
        spec = get_method(method)
        asked = [f"{key}: {value}" for key, value in (
            ("confint", self.confint), ("bootstrap", self.bootstrap and self.bootstrap.n),
            ("ddf", self.ddf)) if value is not None]
        if spec.bayesian and asked:
            raise ValueError(
                f"{', '.join(asked)} {'is' if len(asked) == 1 else 'are'} for likelihood fits "
                f"({_LIKELIHOOD}), not method {method}: a {method} fit's "
                "uncertainty is its posterior (fit.json's 'posterior' key)")
        if self.ddf is not None:
            if not self._exact_lmm() or not spec.exact_lmm_only:
                what = (f"a {self.family} model" if not self._exact_lmm()
                        else f"method {method}")
                raise ValueError(f"ddf: {self.ddf}: denominator degrees of freedom are for "
                                 "linear mixed models (gaussian, identity link) fitted by reml "
                                 f"or ml, not {what}; leave ddf out for Wald z tests")
            if self.ddf == "kenward-roger" and not spec.reml:
                raise ValueError("ddf: kenward-roger needs method reml (as pbkrtest), not "
                                 f"{method}; use ddf: satterthwaite")
        return self

    @field_validator("confint", "ddf", mode="before")
    @classmethod
    def _lower_choice(cls, value):
        return value.lower() if isinstance(value, str) else value

    @field_validator("bootstrap", mode="before")
    @classmethod
    def _bootstrap_count(cls, value):
        if isinstance(value, bool):
            raise ValueError("bootstrap is a number of replicates (or a mapping n/seed/use_re), "
                             f"not {value!r}")
        return {"n": value} if isinstance(value, int) else value

    @field_validator("data")
    @classmethod
    def _data_source(cls, value):
        return _check_source(value)


class ExecutorConfig(BaseModel):
    """``executor: {scheduler: ADDRESS}``: run fit-many's chunks on the Dask cluster whose
    scheduler listens at ADDRESS (``tcp://host:8786``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: str

    @field_validator("scheduler")
    @classmethod
    def _address(cls, value):
        if not value.strip():
            raise ValueError("the scheduler address is empty; write e.g. tcp://host:8786")
        return value.strip()


#: Keys only ``jaxglmm fit-many`` takes (a ``jaxglmm fit`` config naming one is told so).
FIT_MANY_KEYS = ("datasets", "split_by", "chunk_size", "format", "executor", "progress")


class PowerConfig(FitConfig):
    """Config of ``jaxglmm power``: the model and data of ``jaxglmm fit`` and ``power:``."""

    power: PowerSpec

    @model_validator(mode="after")
    def _power_fits_method(self):
        method = self.resolved_method()
        if get_method(method).bayesian:
            raise ValueError(f"power simulates and refits likelihood fits ({_LIKELIHOOD}), "
                             f"not method {method}")
        if self.dpars:
            raise ValueError("power does not handle distributional-parameter formulas "
                             "(dpars) yet")
        if self.power.test == "satterthwaite" and not (self._exact_lmm()
                                                       and get_method(method).exact_lmm_only):
            what = f"a {self.family} model" if not self._exact_lmm() else f"method {method}"
            raise ValueError("power.test: satterthwaite is for linear mixed models (gaussian, "
                             f"identity link) fitted by reml or ml, not {what}; use lrt or "
                             "wald")
        return self


class FitManyConfig(_ModelSpec):
    """Config of ``jaxglmm fit-many``: one model on many same-shape datasets.

    Give ``datasets`` (a list of files or one glob pattern), or ``data`` with ``split_by``.
    ``chunk_size`` datasets are fitted per compiled call and written to ``OUTPUT/chunks/``
    as each finishes (a rerun resumes); ``format`` is that of the chunk files and of the
    final table (``fits.csv`` or ``fits.parquet``); ``executor`` sends the chunks to a Dask
    scheduler; ``progress`` shows a progress bar on stderr (default: when it is a terminal).
    """

    data: str | None = None
    split_by: str | None = None
    datasets: list[str] | str | None = None
    chunk_size: int | None = Field(None, ge=1, strict=True)
    format: Literal["csv", "parquet"] = "csv"
    executor: ExecutorConfig | None = None
    progress: bool | None = Field(None, strict=True)

    @field_validator("format", mode="before")
    @classmethod
    def _lower_format(cls, value):
        return value.lower() if isinstance(value, str) else value

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_mapping(cls, value):
        if value is not None and not isinstance(value, (dict, ExecutorConfig)):
            raise ValueError("executor must be a mapping {scheduler: ADDRESS}, e.g. "
                             f"'executor: {{scheduler: tcp://host:8786}}', not {value!r}")
        return value

    @field_validator("data")
    @classmethod
    def _data_source(cls, value):
        return None if value is None else _check_source(value)

    @field_validator("datasets")
    @classmethod
    def _dataset_sources(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("the list of datasets is empty")
            for source in value:
                _check_source(source)
        elif value is not None:
            _check_source(value)
        return value

    @model_validator(mode="after")
    def _one_way_to_many(self):
        if self.datasets is not None and (self.data is not None or self.split_by is not None):
            raise ValueError("give either 'datasets' (files or a glob pattern) or 'data' with "
                             "'split_by', not both")
        if self.datasets is None and (self.data is None or self.split_by is None):
            raise ValueError("fit-many needs 'datasets' (a list of files or a glob pattern), "
                             "or 'data' with 'split_by' (a column: one dataset per value)")
        return self

    def config_columns(self) -> list[tuple[str, str]]:
        cols = super().config_columns()
        return cols + ([("split_by", self.split_by)] if self.split_by else [])


# ----------------------------------------------------------------------------- loading
def load_config(path: str | os.PathLike, kind: type[_ModelSpec] = FitConfig) -> _ModelSpec:
    """Read, validate and resolve a YAML config.

    Relative ``data``, ``datasets`` and ``output`` paths are made absolute against the config
    file's folder; a missing ``output`` becomes ``out/<config name>`` there.

    Raises
    ------
    FileNotFoundError
        The config file does not exist.
    ConfigError
        The YAML cannot be read, a key appears twice, or a key (or a method option) is
        unknown, missing or has a bad value (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigLoader)
    except RepeatedKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping of keys "
                          "(data, formula, family, method, ...)")
    try:
        config = kind.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, kind)) from None
    if config.method is not None:   # else checked once the model has chosen its method
        check_options(config.method, config.options)
    return _resolve_paths(config, path.resolve().parent, path.stem)


def _resolve_paths(config: _ModelSpec, base: Path, stem: str) -> _ModelSpec:
    def absolute(source: str | None) -> str | None:
        if source is None or is_bundled(source):
            return source
        return str((base / os.path.expanduser(source)).resolve())

    update = {"output": absolute(config.output or f"out/{stem}")}
    if config.data is not None:
        update["data"] = absolute(config.data)
    if isinstance(config, FitManyConfig) and config.datasets is not None:
        ds = config.datasets
        update["datasets"] = [absolute(s) for s in ds] if isinstance(ds, list) else absolute(ds)
    return config.model_copy(update=update)


def expand_datasets(config: FitManyConfig) -> list[str]:
    """The data sources of a ``datasets`` key: the list itself, or a glob's matches in
    natural order.  Raises :class:`FileNotFoundError` when a pattern matches nothing."""
    if isinstance(config.datasets, list):
        return list(config.datasets)
    source = config.datasets
    if is_bundled(source) or not glob.has_magic(source):
        return [source]
    matches = sorted((m for m in glob.glob(source, recursive=True) if os.path.isfile(m)),
                     key=_natural_key)
    if not matches:
        raise FileNotFoundError(f"no files match the datasets pattern {source}")
    return matches


def _natural_key(text: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


# ----------------------------------------------------------------------------- messages
def format_validation_error(err: ValidationError, kind: type[BaseModel]) -> str:
    """One line naming each problem of a pydantic error, e.g.
    ``config key 'formul' is not allowed (did you mean 'formula'?)``.

    Unknown keys come first, and a missing key that one of them was meant to be is not
    repeated."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    meant = {_close_key(str(e["loc"][0]), kind) for e in errors
             if e["type"] == "extra_forbidden" and len(e["loc"]) == 1}
    return "; ".join(_describe(e, kind) for e in errors
                     if not (e["type"] == "missing" and e["loc"][0] in meant))


def _describe(error: dict, kind: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    kind_of = error["type"]
    if kind_of == "extra_forbidden" and len(error["loc"]) == 1:
        return f"config key {loc!r} is not allowed{_hint(loc, kind)}"
    if kind_of == "missing":
        return f"config key {loc!r} is missing"
    if kind_of in _EXPECTED and kind_of != "dict_type":
        return (f"config key {loc!r}: expected {_EXPECTED[kind_of]}, got "
                f"{_yaml_repr(error['input'])}")
    if kind_of == "extra_forbidden":
        return f"config key {loc!r} is not allowed"
    if kind_of in _BOUNDS:
        sign, bound = _BOUNDS[kind_of]
        what = "an integer" if type(error["input"]) is int else "a number"
        return (f"config key {loc!r}: expected {what} {sign} {error['ctx'][bound]}, "
                f"got {_yaml_repr(error['input'])}")
    message = error["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if kind_of == "literal_error":
        message += f", not {error['input']!r}"
    return f"config key {loc!r}: {message}" if loc else message


def _hint(key: str, kind: type[BaseModel]) -> str:
    if kind is FitConfig and key in FIT_MANY_KEYS:
        return f" in a 'jaxglmm fit' config ({key!r} is for 'jaxglmm fit-many')"
    close = _close_key(key, kind)
    if close:
        return f" (did you mean {close!r}?)"
    return f"; the keys are {', '.join(kind.model_fields)}"


def _close_key(key: str, kind: type[BaseModel]) -> str | None:
    close = difflib.get_close_matches(key, list(kind.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None
