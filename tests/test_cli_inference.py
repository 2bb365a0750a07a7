"""The CLI's inference keys (issue 13): ``confint``, ``bootstrap`` and ``ddf`` of ``jaxglmm
fit`` land in fit.json; ``jaxglmm power`` writes the curve."""
import json

import pandas as pd
import pytest
import yaml

from jaxglmm.cli import main

SLEEPSTUDY = {"data": "bundled:sleepstudy", "formula": "Reaction ~ Days + (Days | Subject)",
              "method": "reml"}


def run(tmp_path, record, command="fit"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(record, sort_keys=False))
    out = tmp_path / "out"
    return main([command, str(cfg), "-o", str(out)]), out


def test_fit_json_gets_confint_bootstrap_and_ddf(tmp_path, capsys):
    status, out = run(tmp_path, SLEEPSTUDY | {"confint": "wald", "bootstrap": {"n": 40, "seed": 2},
                                              "ddf": "satterthwaite"})
    assert status == 0
    rec = json.loads((out / "fit.json").read_text())
    assert rec["confint"]["method"] == "wald" and rec["confint"]["level"] == 0.95
    assert rec["confint"]["Days"]["lower"] < 10.467 < rec["confint"]["Days"]["upper"]
    assert rec["confint"]["sigma"] == {"lower": None, "upper": None}     # lme4's NA
    assert rec["bootstrap"]["n"] == 40 and rec["bootstrap"]["sd"]["Days"] > 0
    assert abs(rec["coef_table"]["Days"]["df"] - 17.0) < 1e-3
    boot = pd.read_csv(out / "bootstrap.csv")
    assert len(boot) == 40 and "sd_Subject__Days" in boot.columns
    ci = pd.read_csv(out / "confint.csv")
    assert list(ci.columns) == ["parameter", "lower", "upper"]
    assert "t-tests use Satterthwaite's method" in (out / "summary.txt").read_text()
    # the same seed gives the same replicates
    status, out2 = run(tmp_path / "again", SLEEPSTUDY | {"bootstrap": {"n": 40, "seed": 2}})
    pd.testing.assert_frame_equal(pd.read_csv(out2 / "bootstrap.csv"), boot)


def test_power_command_writes_the_curve(tmp_path):
    record = SLEEPSTUDY | {"method": "ml", "power": {"term": "Days", "effect": 2, "along": "Subject",
                                                       "sizes": [6, 12], "nsim": 60, "seed": 1}}
    status, out = run(tmp_path, record, "power")
    assert status == 0
    curve = pd.read_csv(out / "power.csv")
    assert list(curve.columns) == ["size", "power", "lower", "upper", "nsim"]
    assert list(curve["size"]) == [6, 12] and list(curve["nsim"]) == [60, 60]
    rec = json.loads((out / "power.json").read_text())
    assert rec["tested"] == ["Days"] and len(rec["curve"]) == 2


@pytest.mark.parametrize("key, value, message", [
    ("confint", "exact", "confint"),
    ("bootstrap", True, "bootstrap is a number of replicates"),
    ("ddf", "containment", "ddf"),
])
def test_bad_inference_keys_stop_with_one_line(tmp_path, capsys, key, value, message):
    status, out = run(tmp_path, SLEEPSTUDY | {key: value})
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_ddf_on_a_glmm_is_refused(tmp_path, capsys):
    record = {"data": "bundled:cbpp", "formula": "cbind(incidence, size - incidence) ~ period + (1 | herd)",
              "family": "binomial", "ddf": "satterthwaite"}
    status, _ = run(tmp_path, record)
    assert status == 2
    assert "denominator degrees of freedom are for linear" in capsys.readouterr().err
