"""The method table (jaxglmm/methods.py): records, option specs, lme4's spellings, and the
YAML option models made from the same specs.  No fit is run here."""
import pytest

import jaxglmm as jg
from jaxglmm.io import config as cfg
from jaxglmm.io.config import ConfigError
from jaxglmm.methods import METHOD_NAMES, METHODS, Method, default_method, get_method, resolve


@pytest.fixture(scope="module")
def problems():
    sleep = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    cbpp = jg.Model("incidence | trials(size) ~ period + (1 | herd)", jg.load_dataset("cbpp"),
                    "binomial")
    return sleep.problem, cbpp.problem


def test_get_method_names_the_known_ones():
    assert METHOD_NAMES == ("reml", "ml", "laplace", "agq", "nuts", "vi", "map")
    assert get_method("NUTS") is get_method("nuts") and get_method(METHODS[0]) is METHODS[0]
    with pytest.raises(ValueError) as err:
        get_method("bogus")
    message = str(err.value)
    assert "\n" not in message and "unknown method 'bogus'" in message
    assert all(repr(name) in message for name in METHOD_NAMES)
    with pytest.raises(ValueError, match="unknown method None"):
        get_method(None)


def test_attributes_say_what_the_name_used_to():
    spec = {m.name: m for m in METHODS}
    assert {n for n, m in spec.items() if m.bayesian} == {"nuts", "vi", "map"}
    assert {n for n, m in spec.items() if m.batchable} == {"reml", "ml", "laplace", "agq"}
    assert {n for n, m in spec.items() if m.exact_lmm_only} == {"reml", "ml"}
    assert {n for n, m in spec.items() if m.reml} == {"reml"}
    assert {n for n, m in spec.items() if m.quadrature} == {"agq"}
    assert {n for n, m in spec.items() if m.implicit} == {"reml", "ml", "laplace", "map"}
    assert spec["reml"].ml_refit == "ml" and spec["ml"].ml_refit is None
    assert all(callable(m.runner) for m in METHODS)
    assert len({hash(m) for m in METHODS}) == len(METHODS)     # values: usable as keys
    assert all(callable(m.judge) == m.bayesian for m in METHODS)
    assert all(isinstance(m, Method) and len({o.name for o in m.options}) == len(m.options)
               and all(o.doc for o in m.options) for m in METHODS)


def test_defaults_come_from_the_spec():
    nuts = get_method("nuts")
    settings = nuts.settings({"chains": 2})
    assert settings["chains"] == 2 and settings["warmup"] == 1000 and settings["draws"] == 1000
    assert settings["target_accept"] == 0.8 and settings["init"] == "centre"
    assert set(settings) == set(nuts.option_names)
    assert get_method("agq").points({}) == 25 and get_method("agq").points({"agq_points": 7}) == 7
    assert get_method("laplace").points({}) == 1
    assert get_method("vi").defaults["steps"] == 20000
    assert cfg.NutsOptions().chains == 4 and cfg.MapOptions().optimizer == "optax"


def test_unknown_option_is_refused_with_what_the_method_takes():
    with pytest.raises(ValueError, match=r"unknown option\(s\) for method 'laplace': "
                                         r"\['chains'\]; allowed: \[.*'verbose'"):
        get_method("laplace").check_options({"chains": 2})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) for method 'nuts': \['chians'\]"):
        cfg.check_options("nuts", {"chians": 2})


def test_yaml_option_models_are_made_from_the_specs():
    for method in METHODS:
        model = cfg.METHOD_OPTIONS[method.name]
        assert tuple(model.model_fields) == method.option_names
        assert model().model_dump() == method.defaults
    with pytest.raises(ConfigError, match=r"'options.chains': expected an integer, got 'two'"):
        cfg.check_options("nuts", {"chains": "two"})
    with pytest.raises(ConfigError, match=r"'options.target_accept': expected a number < 1"):
        cfg.check_options("nuts", {"target_accept": 1.5})
    with pytest.raises(ConfigError, match=r"'options.guide': expected 'meanfield' or 'lowrank'"):
        cfg.check_options("vi", {"guide": "full"})
    with pytest.raises(ConfigError, match=r"'options.verbose': expected true or false"):
        cfg.check_options("reml", {"verbose": "yes"})


def test_lme4_spellings_translate(problems):
    sleep, cbpp = problems
    assert default_method(sleep.exact_lmm).name == "reml"
    assert default_method(cbpp.exact_lmm).name == "laplace"
    assert resolve(sleep, None, {"REML": False}) == (get_method("ml"), {})
    assert resolve(cbpp, None, {"nAGQ": 1}) == (get_method("laplace"), {})
    assert resolve(cbpp, "AGQ", {"nAGQ": 9}) == (get_method("agq"), {"agq_points": 9})
    with pytest.raises(ValueError, match="REML=True contradicts method='ml'; write method='reml'"):
        resolve(sleep, "ml", {"REML": True})
    with pytest.raises(ValueError, match="nAGQ=5 contradicts method='laplace'; write "
                                         "method='agq', agq_points=5"):
        resolve(cbpp, "laplace", {"nAGQ": 5})
    with pytest.raises(ValueError, match="REML applies to gaussian models"):
        resolve(cbpp, None, {"REML": True})
    with pytest.raises(ValueError, match="method 'agq' is for non-gaussian families"):
        resolve(sleep, "agq", {})
    with pytest.raises(ValueError, match="method 'ml' is for gaussian models"):
        resolve(cbpp, "ml", {})
    crossed = jg.Model("incidence | trials(size) ~ period + (1 | herd) + (1 | period)",
                       jg.load_dataset("cbpp"), "binomial").problem
    with pytest.raises(ValueError, match="single grouping factor"):
        resolve(crossed, "agq", {})
