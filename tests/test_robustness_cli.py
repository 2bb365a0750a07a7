"""The command line on awkward input: method options of the wrong type, YAML's traps (level
lists read as booleans, repeated keys), convergence warnings on stderr and ``--strict``.

The fits here are tiny: a singular random-slope LMM (no group variation in the data) and a
binomial GLMM with complete separation (y = x > 0), whose Laplace fit really does not
converge (the coefficient runs off to infinity and the Hessian is not positive definite).
"""
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from jaxglmm.cli import main
from jaxglmm.io import config as cfg
from jaxglmm.io.config import ConfigError, FitConfig, load_config
from jaxglmm.methods import METHODS

SLEEPSTUDY = {"data": "bundled:sleepstudy", "formula": "Reaction ~ Days + (Days | Subject)",
              "output": "out"}
CBPP = {"data": "bundled:cbpp", "formula": "cbind(incidence, size - incidence) ~ period + "
        "(1 | herd)", "family": "binomial", "output": "out"}


def write_config(path: Path, record: dict) -> Path:
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    return path


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def error_line(capsys) -> str:
    err = stderr_lines(capsys)
    assert len(err) == 1, err
    assert err[0].startswith("jaxglmm: error: ")
    return err[0]


# ----------------------------------------------------------------------------- 6. option types
BAD_OPTIONS = {
    "nuts chains a word": ("nuts", {"chains": "two"}, "options.chains': expected an integer, "
                                                      "got 'two'"),
    "nuts chains a float": ("nuts", {"chains": 2.5}, "options.chains': expected an integer, "
                                                     "got 2.5"),
    "nuts chains a bool": ("nuts", {"chains": True}, "options.chains': expected an integer, "
                                                     "got true"),
    "nuts chains zero": ("nuts", {"chains": 0}, "options.chains': expected an integer >= 1"),
    "nuts target_accept": ("nuts", {"target_accept": "high"}, "options.target_accept': "
                                                              "expected a number"),
    "nuts target_accept range": ("nuts", {"target_accept": 1.5}, "options.target_accept'"),
    "nuts progress": ("nuts", {"progress": "yes please"}, "options.progress': expected true "
                                                          "or false"),
    "nuts chain_method": ("nuts", {"chain_method": "serial"}, "options.chain_method': "
                                                              "expected 'parallel' or "
                                                              "'vectorized'"),
    "nuts priors not strings": ("nuts", {"priors": {"b": 5}}, "options.priors.b': expected a "
                                                              "string"),
    "nuts priors not a mapping": ("nuts", {"priors": "normal(0, 1)"}, "options.priors': "
                                                                     "expected a mapping"),
    "vi steps": ("vi", {"steps": "many"}, "options.steps': expected an integer"),
    "vi guide": ("vi", {"guide": "fullrank"}, "options.guide'"),
    "map maxiter": ("map", {"maxiter": 1e3}, "options.maxiter': expected an integer"),
    "map seed": ("map", {"seed": False}, "options.seed': expected an integer"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bayesian_options_of_the_wrong_type_stop_with_one_line(case, tmp_path, capsys):
    method, options, expected = BAD_OPTIONS[case]
    config = write_config(tmp_path / "run.yaml", {**SLEEPSTUDY, "method": method,
                                                  "options": options})
    assert main(["fit", str(config)]) == 2
    line = error_line(capsys)
    assert f"config key '{expected}" in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["run.yaml"]


def test_agq_points_of_the_wrong_type_names_the_key(tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", {**CBPP, "method": "agq",
                                                  "options": {"agq_points": "ten"}})
    assert main(["fit", str(config)]) == 2
    line = error_line(capsys)
    assert "config key 'options.agq_points': expected an integer, got 'ten'" in line
    assert "invalid literal" not in line


def test_option_types_are_checked_when_the_method_is_the_default(tmp_path, capsys):
    """No ``method`` key: the options are checked once the model has chosen its method, and
    an option the method does not take keeps the fitter's message."""
    config = write_config(tmp_path / "run.yaml", {**CBPP, "options": {"agq_points": 5}})
    assert main(["fit", str(config)]) == 2
    assert "unknown option(s) for method 'laplace': ['agq_points']" in error_line(capsys)


def test_unknown_option_names_keep_the_fitters_message(tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", {**SLEEPSTUDY, "method": "nuts",
                                                  "options": {"chians": 2, "chains": 2}})
    assert main(["fit", str(config)]) == 2
    assert "unknown option(s) for method 'nuts': ['chians']" in error_line(capsys)


def test_good_options_pass_and_the_models_match_the_fitters():
    models = cfg.METHOD_OPTIONS
    for method in METHODS:          # made from the methods' own option specs
        assert tuple(models[method.name].model_fields) == method.option_names
    assert {"agq_points", "verbose"} <= set(models["agq"].model_fields)
    check_options = cfg.check_options
    check_options("nuts", {"chains": 2, "warmup": 0, "draws": 10, "seed": 1,
                           "target_accept": 0.95, "max_tree_depth": 8, "dense_mass": True,
                           "progress": False, "chain_method": "vectorized", "init": "ml",
                           "marginalize": None, "priors": {"b": "normal(0, 20)"}})
    check_options("vi", {"guide": "lowrank", "rank": None, "learning_rate": 1})  # an int is a number
    check_options("agq", {"agq_points": 9})
    with pytest.raises(ConfigError, match=r"'options.agq_points': expected an integer >= 1, got 0"):
        check_options("agq", {"agq_points": 0})
    check_options("reml", {})
    with pytest.raises(ConfigError, match="options.draws"):
        check_options("map", {"draws": "1000"})


def test_shipped_option_configs_still_load():
    configs = Path(__file__).resolve().parents[1] / "configs"
    for name in ("sleepstudy_nuts.yaml", "cbpp_agq.yaml"):
        config = load_config(configs / name, FitConfig)
        cfg.check_options(config.method, config.options)


# ----------------------------------------------------------------------------- 7a. YAML levels
def test_levels_are_read_as_written_not_as_yaml_booleans(tmp_path):
    (tmp_path / "run.yaml").write_text(textwrap.dedent("""\
        data: bundled:sleepstudy
        formula: Reaction ~ Days + (1 | Subject)
        levels:
          a: [no, yes]
          b: [on, off, y, n]
          c: [NO, Yes, 'quoted', "1"]
          yes: [x]
          d: [1, 2.5, 1.0, true, false]
        options: {progress: no, learning_rate: 1e-3, steps: 1000}
        """))
    config = load_config(tmp_path / "run.yaml", FitConfig)
    assert config.levels["a"] == ["no", "yes"]
    assert config.levels["b"] == ["on", "off", "y", "n"]
    assert config.levels["c"] == ["NO", "Yes", "quoted", "1"]
    assert config.levels["yes"] == ["x"]   # a column name is text too
    # What YAML 1.2 also reads as numbers and booleans stays so, to match numeric and
    # boolean data columns as before (1.0 is the label "1" of a float column).
    assert config.levels["d"] == [1, 2.5, 1.0, True, False]
    assert [type(v) for v in config.levels["d"]] == [int, float, float, bool, bool]
    # outside levels YAML as usual, but 1e-3 is a number (YAML 1.1 reads a string)
    assert config.options == {"progress": False, "learning_rate": 0.001, "steps": 1000}
    cfg.check_options("vi", config.options)


def test_a_yes_no_level_list_matches_the_data(tmp_path, capsys):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"g": np.repeat(list("abcdef"), 6), "a": np.tile(["no", "yes"], 18),
                          "y": rng.normal(size=36).round(4)})
    frame.loc[0, "a"] = "maybe"
    frame.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "run.yaml").write_text("data: d.csv\nformula: y ~ a + (1 | g)\n"
                                       "levels: {a: [no, yes]}\noutput: out\n")
    assert main(["fit", str(tmp_path / "run.yaml")]) == 2
    line = error_line(capsys)
    assert "['no', 'yes']" in line and "False" not in line, line


# ----------------------------------------------------------------------------- 7b. repeated keys
def test_a_repeated_key_is_refused_with_its_lines(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("data: bundled:sleepstudy\n"
                    "formula: Reaction ~ Days + (1 | Subject)\n"
                    "method: reml\n"
                    "output: out\n"
                    "formula: Reaction ~ Days + (Days | Subject)\n")
    assert main(["fit", str(path)]) == 2
    assert error_line(capsys) == (f"jaxglmm: error: {path}: key 'formula' appears twice "
                                  "(lines 2 and 5)")
    assert [p.name for p in tmp_path.iterdir()] == ["run.yaml"]


def test_a_repeated_nested_key_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    text = ("data: bundled:sleepstudy\n"
            "formula: Reaction ~ Days + (1 | Subject)\n"
            "method: nuts\n"
            "options:\n"
            "  chains: 2\n"
            "  priors: {b: 'normal(0, 5)', b: 'normal(0, 1)'}\n"
            "  chains: 4\n")
    path.write_text(text)
    with pytest.raises(ConfigError) as err:   # a mapping's own keys before those inside
        load_config(path, FitConfig)
    assert str(err.value) == f"{path}: key 'options.chains' appears twice (lines 5 and 7)"
    path.write_text(text.replace("  chains: 4\n", ""))
    with pytest.raises(ConfigError) as err:
        load_config(path, FitConfig)
    assert str(err.value) == f"{path}: key 'options.priors.b' appears twice (line 6)"


def test_a_repeated_level_key_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: bundled:sleepstudy\nformula: Reaction ~ Days + (1 | Subject)\n"
                    "levels:\n  a: [x, y]\n  a: [y, x]\n")
    with pytest.raises(ConfigError, match=r"key 'levels.a' appears twice \(lines 4 and 5\)"):
        load_config(path, FitConfig)


# ----------------------------------------------------------------------------- 3. warnings, --strict
def singular_data() -> pd.DataFrame:
    """y ~ x with no group-level variation at all: lme4's lmer(y ~ x + (x | g)) is singular."""
    rng = np.random.default_rng(1)
    x = np.tile(np.arange(5.0), 6)
    return pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(6)], 5), "x": x,
                         "y": (1 + 0.5 * x + rng.normal(size=30)).round(4)})


def separated_data(n_sims: int = 1) -> pd.DataFrame:
    """Bernoulli y = (x > 0): complete separation, the coefficient of x has no finite MLE."""
    frames = []
    for sim in range(1, n_sims + 1):
        x = np.random.default_rng(2).normal(size=48).round(4)
        frames.append(pd.DataFrame({"sim": sim, "g": np.repeat([f"g{i}" for i in range(6)], 8),
                                    "x": x, "y": (x > 0).astype(int)}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def singular_config(tmp_path):
    singular_data().to_csv(tmp_path / "d.csv", index=False)
    return write_config(tmp_path / "run.yaml", {"data": "d.csv", "formula": "y ~ x + (x | g)",
                                                "method": "reml", "output": "out"})


@pytest.fixture
def separated_config(tmp_path):
    separated_data().to_csv(tmp_path / "d.csv", index=False)
    return write_config(tmp_path / "run.yaml", {"data": "d.csv", "formula": "y ~ x + (1 | g)",
                                                "family": "binomial", "output": "out"})


def test_a_singular_fit_warns_in_one_line_and_strict_lets_it_pass(singular_config, capsys):
    for argv in (["fit", str(singular_config)], ["fit", "--strict", str(singular_config)]):
        assert main(argv) == 0   # singular, but converged: --strict does not fail it
        err = stderr_lines(capsys)
        assert len(err) == 1, err
        assert err[0].startswith("jaxglmm: warning: boundary (singular) fit: ")
        assert "ConvergenceWarning" not in err[0] and "warn" not in err[0].split(":", 2)[2]


def test_a_fit_that_did_not_converge_warns_and_exits_3_with_strict(separated_config, capsys):
    out = separated_config.parent / "out"
    assert main(["fit", str(separated_config)]) == 0
    err = stderr_lines(capsys)
    assert err and all(line.startswith("jaxglmm: warning: ") for line in err), err
    assert any("not positive definite" in line for line in err)

    assert main(["fit", "--strict", str(separated_config)]) == 3
    err = stderr_lines(capsys)
    assert err[-1].startswith("jaxglmm: error: ") and "--strict" in err[-1]
    assert str(out) in err[-1]
    assert all(line.startswith("jaxglmm: warning: ") for line in err[:-1])
    record = yaml.safe_load((out / "fit.json").read_text())   # outputs written all the same
    assert record["converged"] is False


def test_fit_many_strict_exits_3_when_a_dataset_did_not_converge(tmp_path, capsys):
    separated_data(2).to_csv(tmp_path / "sims.csv", index=False)
    config = write_config(tmp_path / "many.yaml", {
        "data": "sims.csv", "split_by": "sim", "formula": "y ~ x + (1 | g)",
        "family": "binomial", "output": "out"})
    assert main(["fit-many", str(config)]) == 0
    err = stderr_lines(capsys)
    assert err == ["jaxglmm: warning: 2 of 2 datasets did not converge (1, 2); see the "
                   "'converged' column of fits.csv"], err
    assert main(["fit-many", "--strict", str(config)]) == 3
    err = stderr_lines(capsys)
    assert len(err) == 2 and err[1].startswith("jaxglmm: error: ") and "--strict" in err[1]
    fits = pd.read_csv(tmp_path / "out" / "fits.csv")
    assert not fits["converged"].any()


def test_fit_many_strict_passes_when_every_dataset_converged(tmp_path, capsys):
    rng = np.random.default_rng(5)
    g = np.repeat([f"g{i}" for i in range(8)], 6)
    frames = [pd.DataFrame({"sim": s, "g": g, "x": rng.normal(size=48).round(4)})
              for s in (1, 2)]
    data = pd.concat(frames, ignore_index=True)
    effect = rng.normal(0, 0.7, 16)[np.repeat(np.arange(16), 6)]
    data["y"] = (1 + 0.5 * data["x"] + effect + rng.normal(size=96)).round(4)
    data.to_csv(tmp_path / "sims.csv", index=False)
    config = write_config(tmp_path / "many.yaml", {"data": "sims.csv", "split_by": "sim",
                                                   "formula": "y ~ x + (1 | g)",
                                                   "method": "reml", "output": "out"})
    assert main(["fit-many", "--strict", str(config)]) == 0
    assert stderr_lines(capsys) == []
