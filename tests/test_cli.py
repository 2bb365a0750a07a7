"""The ``jaxglmm`` command line: outputs, one-line errors, path resolution, fit-many.

The sleepstudy fits here share one compiled REML function (same shapes), and the fit-many
tests one vmapped one, so the module compiles twice.  The reference value is lme4's
``lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE)`` (tests/data).
"""
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import jaxglmm
from jaxglmm.cli import main
from jaxglmm.io.config import FitConfig, FitManyConfig, expand_datasets, load_config
from reference_cases import load_reference

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SLEEPSTUDY = {"data": "bundled:sleepstudy", "formula": "Reaction ~ Days + (Days | Subject)",
              "family": "gaussian", "method": "reml"}
FIT_JSON_KEYS = {"formula", "family", "link", "method", "nobs", "fixef", "fixef_se", "varcorr",
                 "sigma", "family_params", "loglik", "aic", "bic", "converged", "messages",
                 "seconds"}


def write_config(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    return path


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    """As R's write.csv: labels quoted, numbers not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("jaxglmm: error: ")
    return err[0]


# ----------------------------------------------------------------------------- fit
@pytest.fixture(scope="module")
def sleepstudy_run(tmp_path_factory):
    """``jaxglmm fit`` on the bundled sleepstudy, run once: (output folder, stdout)."""
    folder = tmp_path_factory.mktemp("fit")
    config = write_config(folder / "sleepstudy.yaml", {**SLEEPSTUDY, "output": "out/sleep"})
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["fit", str(config)]) == 0
    return folder / "out" / "sleep", stdout.getvalue()


def test_fit_writes_every_output(sleepstudy_run):
    out, stdout = sleepstudy_run
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fit.json", "ranef.csv",
                                                      "summary.txt"]
    assert str(out) in stdout and "Fixed effects" in stdout

    record = json.loads((out / "fit.json").read_text())
    assert set(record) == FIT_JSON_KEYS
    reference = load_reference("sleepstudy_reml")
    assert record["fixef"]["Days"] == pytest.approx(reference["fixef"]["Days"], rel=1e-3)
    assert record["fixef"]["Intercept"] == pytest.approx(251.405, rel=1e-3)
    assert (record["method"], record["family"], record["link"]) == ("reml", "gaussian", "identity")
    assert record["nobs"] == 180 and record["converged"] is True
    assert record["sigma"] == pytest.approx(25.59, rel=1e-3)
    assert record["loglik"] == pytest.approx(-871.814, rel=1e-4)
    residual = [r for r in record["varcorr"] if r["group"] == "Residual"]
    assert residual[0]["sd_or_cor"] == pytest.approx(record["sigma"])

    assert (out / "summary.txt").read_text().strip() in stdout
    ranef = pd.read_csv(out / "ranef.csv", dtype={"level": str})
    assert list(ranef.columns) == ["group", "level", "term", "estimate", "condsd"]
    assert len(ranef) == 18 * 2 and set(ranef["term"]) == {"Intercept", "Days"}
    assert (ranef["condsd"] > 0).all()


def test_resolved_config_is_absolute_and_reruns(sleepstudy_run):
    out, _ = sleepstudy_run
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["data"] == "bundled:sleepstudy"
    assert Path(resolved["output"]).is_absolute() and Path(resolved["output"]) == out
    assert resolved["method"] == "reml" and resolved["link"] == "identity"
    again = load_config(out / "config.yaml", FitConfig)  # the written config is a valid config
    assert again.formula == SLEEPSTUDY["formula"]


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch, capsys):
    data = write_csv(tmp_path / "data" / "sleep.csv", jaxglmm.load_dataset("sleepstudy"))
    config = write_config(tmp_path / "configs" / "run.yaml",
                          {**SLEEPSTUDY, "data": "../data/sleep.csv", "output": "../results"})
    results = tmp_path / "results"
    results.mkdir()
    (results / "notes.txt").write_text("kept")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert main(["fit", str(config)]) == 0
    capsys.readouterr()
    assert (results / "fit.json").is_file() and (results / "notes.txt").read_text() == "kept"
    assert yaml.safe_load((results / "config.yaml").read_text())["data"] == str(data)
    assert list(elsewhere.iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


BAD_CONFIGS = {
    "unknown key": ({"formul": SLEEPSTUDY["formula"]}, "config key 'formul' is not allowed "
                                                       "(did you mean 'formula'?)"),
    "missing file": ({"data": "nothere.csv"}, "nothere.csv"),
    "unknown bundled dataset": ({"data": "bundled:sleep"}, "unknown bundled dataset 'sleep'"),
    "unknown column in formula": ({"formula": "Reaction ~ Dayz + (Days | Subject)"}, "'Dayz'"),
    "unknown column in config": ({"categorical": ["Subjekt"]}, "'Subjekt'"),
    "missing operator": ({"formula": "Reaction ~ Days Subject + (1 | Subject)"},
                         "missing operator between 'Days' and 'Subject'"),
    "unsupported method": ({"method": "agq"}, "method 'agq' is for non-gaussian families"),
    "unknown method": ({"method": "bayes"}, "config key 'method'"),
    "method for another family": ({"method": "laplace", "family": "poisson"}, "poisson"),
    "unknown option": ({"options": {"chains": 4}}, "chains"),
    "fit-many key": ({"split_by": "Subject"}, "'split_by' is for 'jaxglmm fit-many'"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_input_stops_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    change, expected = BAD_CONFIGS[case]
    record = {**SLEEPSTUDY, "output": "out"} | change
    if "formul" in change:
        del record["formula"]
    config = write_config(tmp_path / "run.yaml", record)
    assert main(["fit", str(config)]) == 2
    assert expected in error_line(capsys)
    assert capsys.readouterr().out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["run.yaml"]


def test_missing_config_and_bad_yaml(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in error_line(capsys)
    (tmp_path / "bad.yaml").write_text("data: [unclosed\nformula: y ~ x\n")
    assert main(["fit", str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML at line 2" in error_line(capsys)


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    config = write_config(tmp_path / "run.yaml", {**SLEEPSTUDY, "output": "taken"})
    assert main(["fit", str(config)]) == 2
    assert "is not a folder" in error_line(capsys)


def test_the_process_exits_2_with_one_stderr_line(tmp_path):
    config = write_config(tmp_path / "run.yaml", {**SLEEPSTUDY, "formul": "y ~ x"})
    done = subprocess.run([sys.executable, "-m", "jaxglmm.cli", "fit", str(config)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jaxglmm: error: config key 'formul' is not allowed (did you mean 'formula'?)"]


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxglmm {jaxglmm.__version__}"


# ----------------------------------------------------------------------------- fit-many
def simulated_replicates(n_sims: int = 4) -> pd.DataFrame:
    """Stacked replicates of y ~ x + (1 | g): 8 groups x 6 rows each, column ``sim``."""
    rng = np.random.default_rng(7)
    g = np.repeat([f"g{i}" for i in range(8)], 6)
    frames = []
    for sim in range(1, n_sims + 1):
        x = rng.normal(size=48)
        y = 1 + 0.5 * x + rng.normal(0, 0.7, 8)[np.repeat(np.arange(8), 6)] + rng.normal(size=48)
        frames.append(pd.DataFrame({"sim": sim, "g": g, "x": x.round(4), "y": y.round(4)}))
    return pd.concat(frames, ignore_index=True)


MANY = {"formula": "y ~ x + (1 | g)", "family": "gaussian", "method": "reml", "output": "out"}


def test_fit_many_split_by(tmp_path, capsys):
    write_csv(tmp_path / "sims.csv", simulated_replicates(4))
    config = write_config(tmp_path / "many.yaml", {"data": "sims.csv", "split_by": "sim", **MANY})
    assert main(["fit-many", str(config)]) == 0
    assert "4 datasets" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml", "fits.csv"]
    fits = pd.read_csv(tmp_path / "out" / "fits.csv")
    assert list(fits.columns) == ["dataset", "Intercept", "x", "loglik", "converged", "message"]
    assert fits["dataset"].tolist() == [1, 2, 3, 4]
    assert fits["converged"].all() and np.isfinite(fits["loglik"]).all()
    # Each row is that replicate's own fit.
    data = simulated_replicates(4)
    one = jaxglmm.fit(MANY["formula"], data[data["sim"] == 3].reset_index(drop=True),
                      method="reml")
    assert fits.loc[2, "x"] == pytest.approx(one.fixef["x"], rel=1e-5)


def test_fit_many_glob_of_files_in_natural_order(tmp_path, capsys):
    data = simulated_replicates(3)
    for sim, name in zip((1, 2, 3), ("rep_2", "rep_10", "rep_1")):
        write_csv(tmp_path / "reps" / f"{name}.csv", data[data["sim"] == sim].drop(columns="sim"))
    config = write_config(tmp_path / "many.yaml", {"datasets": "reps/rep_*.csv", **MANY})
    assert main(["fit-many", str(config)]) == 0
    capsys.readouterr()
    fits = pd.read_csv(tmp_path / "out" / "fits.csv")
    assert fits["dataset"].tolist() == ["rep_1", "rep_2", "rep_10"]
    resolved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert resolved["datasets"] == [str(tmp_path / "reps" / f"{n}.csv")
                                    for n in ("rep_1", "rep_2", "rep_10")]


BAD_MANY = {
    "no match": ({"datasets": "reps/*.csv"}, "no files match"),
    "both ways": ({"datasets": ["a.csv"], "data": "a.csv", "split_by": "sim"}, "not both"),
    "neither": ({"data": "a.csv"}, "'data' with 'split_by'"),
    "split column": ({"data": "sims.csv", "split_by": "replicate"}, "'replicate'"),
}


@pytest.mark.parametrize("case", list(BAD_MANY))
def test_fit_many_bad_input(case, tmp_path, capsys):
    write_csv(tmp_path / "sims.csv", simulated_replicates(2))
    config = write_config(tmp_path / "many.yaml", {**BAD_MANY[case][0], **MANY})
    assert main(["fit-many", str(config)]) == 2
    assert BAD_MANY[case][1] in error_line(capsys)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- shipped configs
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def shipped_kind(path: Path):
    raw = yaml.safe_load(path.read_text())
    return FitManyConfig if {"datasets", "split_by"} & set(raw) else FitConfig


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_are_valid(path):
    config = load_config(path, shipped_kind(path))
    sources = [config.data] if config.data else []
    if isinstance(config, FitManyConfig) and config.datasets is not None:
        sources = expand_datasets(config)
    for source in sources:
        assert source.startswith("bundled:") or Path(source).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_run(path, tmp_path, capsys):
    command = "fit-many" if shipped_kind(path) is FitManyConfig else "fit"
    assert main([command, str(path), "--output", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    if command == "fit":
        assert json.loads((tmp_path / "out" / "fit.json").read_text())["converged"] is True
    else:
        assert pd.read_csv(tmp_path / "out" / "fits.csv")["converged"].all()


@pytest.mark.parametrize("method", ["nuts", "vi", "map"])
def test_fit_many_refuses_bayesian_methods(method, tmp_path, capsys):
    """fit-many runs likelihood fits only: a Bayesian method is refused, not run as ML and
    labelled with its name."""
    write_csv(tmp_path / "sims.csv", simulated_replicates(2))
    config = write_config(tmp_path / "many.yaml",
                          {"data": "sims.csv", "split_by": "sim", **MANY, "method": method})
    assert main(["fit-many", str(config)]) == 2
    line = error_line(capsys)
    assert f"method '{method}' cannot be batched" in line and "likelihood fits" in line
    assert not (tmp_path / "out").exists()


def test_header_only_csv_says_the_data_has_no_rows(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("Reaction,Days,Subject\n")
    config = write_config(tmp_path / "fit.yaml", {**SLEEPSTUDY, "data": "empty.csv",
                                                  "output": "out"})
    assert main(["fit", str(config)]) == 2
    line = error_line(capsys)
    assert "the data has no rows" in line and "missing value" not in line
