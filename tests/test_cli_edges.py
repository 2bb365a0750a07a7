"""The command line's edges (issue 22): an output folder from an earlier run, an output
folder that cannot be written, keys that conflict with the method (refused when the config
is read, before any data are read or fitted), and progress bars only on a terminal.
R reference: scripts/reasons_reference.R (dataset "a" of tests/data/reasons_many.csv)."""
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from jaxglmm import cli
from jaxglmm.bayes import drivers
from jaxglmm.cli import main
from jaxglmm.io.config import ConfigError, FitConfig, NutsOptions, ViOptions, load_config

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "reasons_reference.json").read_text())
MODEL = {"formula": "y ~ x + (1 | g)", "method": "reml"}


def write_config(path: Path, record: dict) -> Path:
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err           # one line, no traceback
    assert err[0].startswith("jaxglmm: error: ")
    return err[0]


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    table = pd.read_csv(DATA / "reasons_many.csv", dtype={"sim": str, "g": str})
    path = tmp_path_factory.mktemp("data") / "a.csv"
    table[table.sim == "a"].to_csv(path, index=False)
    return path


def no_data_read(monkeypatch):
    """Any read of the data fails the test: what is refused must be refused before."""
    def read(source):
        raise AssertionError(f"the data were read ({source})")
    monkeypatch.setattr(cli, "_read_data", read)


# ----------------------------------------------------------------------------- earlier runs
@pytest.fixture(scope="module")
def earlier_run(data_csv, tmp_path_factory):
    """A folder holding a fit with confint (and a file of the user's own)."""
    root = tmp_path_factory.mktemp("earlier")
    out = root / "out"
    config = write_config(root / "run.yaml", {"data": str(data_csv), **MODEL,
                                              "confint": "wald", "output": str(out)})
    assert main(["fit", str(config)]) == 0
    (out / "notes.txt").write_text("mine")
    return root, out


def test_the_first_run_matches_lme4(earlier_run):
    _, out = earlier_run
    record = json.loads((out / "fit.json").read_text())
    ref = REF["many"]["fits"]["a"]
    np.testing.assert_allclose(record["fixef"]["x"], ref["fixef"]["x"], rtol=1e-5)
    np.testing.assert_allclose(record["loglik"], ref["logLik"], rtol=1e-7)
    assert (out / "confint.csv").is_file()


def test_a_run_that_would_leave_an_earlier_output_is_refused_before_reading(
        earlier_run, data_csv, capsys, monkeypatch):
    root, out = earlier_run
    before = (out / "fit.json").read_bytes()
    config = write_config(root / "plain.yaml", {"data": str(data_csv), **MODEL,
                                                "output": str(out)})
    no_data_read(monkeypatch)
    assert main(["fit", str(config)]) == 2
    line = error_line(capsys)
    assert "confint.csv" in line and "--force" in line and str(out) in line
    assert "fit.json" not in line and "notes.txt" not in line   # rewritten / not ours
    assert (out / "fit.json").read_bytes() == before and (out / "confint.csv").is_file()
    # fit-many would write neither fit.json nor summary.txt nor ranef.csv nor confint.csv
    many = write_config(root / "many.yaml", {"data": str(data_csv), "split_by": "sim",
                                             **MODEL, "output": str(out)})
    assert main(["fit-many", str(many)]) == 2
    line = error_line(capsys)
    for name in ("fit.json", "summary.txt", "ranef.csv", "confint.csv"):
        assert name in line, line
    assert "config.yaml" not in line


def test_force_removes_the_earlier_outputs_and_nothing_else(earlier_run, data_csv, capsys):
    root, out = earlier_run
    config = write_config(root / "plain.yaml", {"data": str(data_csv), **MODEL,
                                                "output": str(out)})
    assert main(["fit", "--force", str(config)]) == 0
    assert not (out / "confint.csv").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fit.json", "notes.txt",
                                                     "ranef.csv", "summary.txt"]
    record = json.loads((out / "fit.json").read_text())
    assert "confint" not in record
    np.testing.assert_allclose(record["fixef"]["x"], REF["many"]["fits"]["a"]["fixef"]["x"],
                               rtol=1e-5)
    # the same run again writes the same files: nothing stale, nothing refused
    assert main(["fit", str(config)]) == 0


# ----------------------------------------------------------------------------- unwritable
def test_an_output_folder_that_cannot_be_created_is_one_line(data_csv, tmp_path, capsys,
                                                             monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = write_config(tmp_path / "run.yaml", {"data": str(data_csv), **MODEL})
    no_data_read(monkeypatch)
    for command in ("fit", "fit-many"):
        args = [command, str(config), "-o", str(blocker / "out")]
        if command == "fit-many":
            config_many = write_config(tmp_path / "many.yaml", {
                "data": str(data_csv), "split_by": "sim", **MODEL})
            args = [command, str(config_many), "-o", str(blocker / "out")]
        assert main(args) == 2
        line = error_line(capsys)
        assert "cannot be created" in line and str(blocker) in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a read-only folder")
def test_a_read_only_output_folder_is_one_line(data_csv, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        config = write_config(tmp_path / "run.yaml", {"data": str(data_csv), **MODEL})
        no_data_read(monkeypatch)
        assert main(["fit", str(config), "-o", str(locked / "out")]) == 2
        assert "cannot be created" in error_line(capsys)
        assert main(["fit", str(config), "-o", str(locked)]) == 2
        assert "cannot be written" in error_line(capsys)
    finally:
        locked.chmod(0o700)


def test_a_write_that_fails_after_the_fit_is_one_line(earlier_run, data_csv, tmp_path, capsys,
                                                      monkeypatch):
    out = tmp_path / "out"

    def refuse(output, files, stale=()):
        raise PermissionError(13, "Permission denied", str(output / "fit.json"))
    monkeypatch.setattr(cli, "_write_folder", refuse)
    config = write_config(tmp_path / "run.yaml", {"data": str(data_csv), **MODEL,
                                                  "output": str(out)})
    assert main(["fit", str(config)]) == 2
    line = error_line(capsys)
    assert "cannot write the outputs" in line and "Permission denied" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- conflicts
CONFLICTS = {
    "bootstrap with nuts": ({"method": "nuts", "bootstrap": 100}, "likelihood fits"),
    "confint with vi": ({"method": "vi", "confint": "wald"}, "likelihood fits"),
    "profile with map": ({"method": "map", "confint": "profile"}, "likelihood fits"),
    "ddf with nuts": ({"method": "nuts", "ddf": "satterthwaite"}, "likelihood fits"),
    "kenward-roger with ml": ({"method": "ml", "ddf": "kenward-roger"}, "needs method reml"),
    "satterthwaite with laplace": ({"method": "laplace", "ddf": "satterthwaite"},
                                   "denominator degrees of freedom"),
    "ddf with poisson": ({"method": None, "family": "poisson", "ddf": "satterthwaite"},
                        "not a poisson model"),
    "reml with poisson": ({"family": "poisson"}, "method 'reml' is for gaussian"),
    "agq with gaussian": ({"method": "agq"}, "method 'agq' is for non-gaussian"),
    "confint level as text": ({"confint": "wald", "confint_level": "0.95"},
                              "'confint_level': expected a number, got '0.95'"),
}
POWER_CONFLICTS = {
    "power with nuts": ({"method": "nuts"}, {}, "likelihood fits"),
    "satterthwaite power for a glmm": ({"method": None, "family": "poisson"},
                                       {"test": "satterthwaite"}, "use lrt or wald"),
    "power with dpars": ({"method": None, "family": "zero_inflated_poisson",
                          "dpars": {"zi": "~ x"}}, {}, "dpars"),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_a_key_that_conflicts_with_the_method_is_refused_when_read(case, data_csv, tmp_path,
                                                                   capsys, monkeypatch):
    change, message = CONFLICTS[case]
    record = {k: v for k, v in ({"data": str(data_csv), **MODEL, "output": "out"}
                                | change).items() if v is not None}
    config = write_config(tmp_path / "run.yaml", record)
    with pytest.raises(ConfigError, match="^[^\n]*$"):
        load_config(config, FitConfig)
    no_data_read(monkeypatch)
    assert main(["fit", str(config)]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", list(POWER_CONFLICTS))
def test_a_power_key_that_conflicts_is_refused_when_read(case, data_csv, tmp_path, capsys,
                                                         monkeypatch):
    change, power, message = POWER_CONFLICTS[case]
    record = {k: v for k, v in ({"data": str(data_csv), **MODEL, "output": "out",
                                 "power": {"term": "x", "nsim": 10, **power}}
                                | change).items() if v is not None}
    config = write_config(tmp_path / "power.yaml", record)
    no_data_read(monkeypatch)
    assert main(["power", str(config)]) == 2
    assert message in error_line(capsys)


def test_what_suits_the_method_is_still_accepted(data_csv, tmp_path):
    for change in ({"method": "ml", "ddf": "satterthwaite"}, {"ddf": "kenward-roger"},
                   {"confint": "profile", "confint_level": 0.9},
                   {"confint": "wald", "confint_level": 1 - 1 / 20},
                   {"method": "nuts", "options": {"chains": 1}},
                   {"categorical": None, "levels": None}, {"categorical": "g"}):
        config = write_config(tmp_path / "ok.yaml", {"data": str(data_csv), **MODEL} | change)
        loaded = load_config(config, FitConfig)
        assert loaded.model_kwargs()["categorical"] in ((), ("g",))


# ----------------------------------------------------------------------------- progress
class _Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


class _Stop(Exception):
    pass


@pytest.mark.parametrize("tty", [False, True])
def test_the_nuts_and_vi_bars_show_only_on_a_terminal(tty, data_csv, monkeypatch):
    import jaxglmm as jg
    monkeypatch.setattr("sys.stderr", _Terminal(tty))
    assert drivers.show_progress(None) is tty
    assert drivers.show_progress(True) is True and drivers.show_progress(False) is False
    assert NutsOptions().progress is None and ViOptions().progress is None
    seen = {}

    def nuts_runner(bm, settings, *args):
        seen["nuts"] = settings[-1]
        raise _Stop

    def vi_runner(bm, kind, rank, steps, lr, progress, marginal):
        seen["vi"] = progress
        raise _Stop
    monkeypatch.setattr(drivers, "_runner", nuts_runner)
    monkeypatch.setattr(drivers, "_vi_runner", vi_runner)
    model = jg.Model(MODEL["formula"], pd.read_csv(data_csv, dtype={"g": str}))
    for method in ("nuts", "vi"):
        with pytest.raises(_Stop):
            model.fit(method)
        with pytest.raises(_Stop):
            model.fit(method, progress=not tty)
    assert seen == {"nuts": not tty, "vi": not tty}   # the last call: the option given
