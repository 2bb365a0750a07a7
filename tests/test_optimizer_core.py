"""The one BFGS core (fit.optimize): a pure init/update pair with the line search as an
argument, the same iterates for a single run and a vmapped batch, and the fit's
``optimizer`` option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxglmm as jg
from jaxglmm.fit import host, optimize as opt

jax.config.update("jax_enable_x64", True)


def rosenbrock(x, aux):
    """A Rosenbrock valley in 2 coordinates plus a quadratic one; aux counts evaluations."""
    f = (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2 + 0.5 * (x[2] - 2.0) ** 2
    return f, aux + 1.0


VG = jax.value_and_grad(rosenbrock, has_aux=True)
STARTS = jnp.array([[-1.2, 1.0, 0.0], [0.5, -0.3, 3.0], [2.0, 2.5, -1.0], [-0.7, 0.2, 2.5]])
SEARCHES = {"backtracking": opt.BACKTRACKING, "one_trial": opt.ONE_TRIAL}


def _path(step, s, n):
    """n updates from state s: every iterate's x, f and status (a Python loop of the pure
    update)."""
    out = []
    for _ in range(n):
        s = step(s)
        out.append((s.x, s.f, s.status))
    return out


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_both_searches_find_the_minimum(name):
    search = SEARCHES[name]
    run = jax.jit(lambda x0: opt.run(VG, opt.init(x0, jnp.zeros(())), search, 1000))
    for x0 in STARTS:
        s = run(x0)
        # a search stalled at the optimum (below f's rounding) is LINESEARCH there
        assert int(s.status) in (opt.CONVERGED, opt.LINESEARCH), (name, x0, s.status)
        np.testing.assert_allclose(s.x, [1.0, 1.0, 2.0], atol=1e-5)
        assert float(s.aux) >= 1 and int(s.nev) >= int(s.it)       # aux: carried along


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_vmapped_update_makes_the_same_iterates(name):
    """The batch engine steps the same update under vmap: each member's iterates are a
    single run's (to rounding: vectorized products round differently)."""
    search, n = SEARCHES[name], 25
    one = lambda s: opt.update(VG, s, search, maxiter=400)     # noqa: E731
    batched = _path(jax.jit(jax.vmap(one)),
                    jax.vmap(lambda x0: opt.init(x0, jnp.zeros(())))(STARTS), n)
    step = jax.jit(one)
    single = [_path(step, opt.init(x0, jnp.zeros(())), n) for x0 in STARTS]
    for i in range(len(STARTS)):
        for k in range(n):
            np.testing.assert_allclose(batched[k][0][i], single[i][k][0], rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(batched[k][1][i], single[i][k][1], rtol=1e-8, atol=1e-12)
            assert int(batched[k][2][i]) == int(single[i][k][2])


def test_run_then_hessian_makes_the_hessian_in_the_loop():
    for sides in (1, 2):
        run = jax.jit(lambda x0: opt.hessian_result(opt.run_then_hessian(
            VG, opt.hessian_run(opt.init(x0, jnp.zeros(())), sides=sides), opt.ONE_TRIAL,
            maxiter=400)))
        r = run(STARTS[0])
        assert int(r.status) == opt.CONVERGED
        exact = np.array([[802.0, -400.0, 0.0], [-400.0, 200.0, 0.0], [0.0, 0.0, 1.0]])
        np.testing.assert_allclose(r.hessian, exact, rtol=2e-3 if sides == 1 else 1e-5,
                                   atol=1e-6)
    with pytest.raises(ValueError, match="one evaluation per update"):
        opt.run_then_hessian(VG, opt.hessian_run(opt.init(STARTS[0], jnp.zeros(()))),
                             opt.BACKTRACKING)


def test_minimize_reports_iterations_and_a_bad_start():
    fun = lambda x: rosenbrock(x, 0.0)[0]                    # noqa: E731
    r = jax.jit(lambda x0: opt.minimize(fun, x0))(STARTS[0])
    assert int(r.status) == opt.CONVERGED and 0 < int(r.n_iter) < int(r.n_evals)
    np.testing.assert_allclose(r.x, [1.0, 1.0, 2.0], atol=1e-6)
    bad = jax.jit(lambda x0: opt.minimize(lambda x: jnp.log(x[0]) + fun(x), x0))(STARTS[0])
    assert int(bad.status) == opt.NONFINITE and int(bad.n_iter) == 0


def test_optimizer_option_is_checked_in_one_line():
    with pytest.raises(ValueError, match=r"^unknown optimizer 'newton': choose one of "
                       r"'bfgs', 'lbfgsb', 'cobyqa'$"):
        host.choose_optimizer("newton", ("bfgs",), "bfgs", "x")
    model = jg.Model("Reaction ~ Days + (1 | Subject)", jg.load_dataset("sleepstudy"))
    for name, message in [("newton", "unknown optimizer 'newton'"),
                          ("cobyqa", "optimizer 'cobyqa' does not apply")]:
        with pytest.raises(ValueError, match=message) as err:
            model.fit("reml", optimizer=name)
        assert "\n" not in str(err.value)
