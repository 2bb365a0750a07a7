"""The device benchmark: the project's headline cases on whatever JAX device is present.

Run it on a lent GPU machine (or here, on the CPU) as one short script:

    python scripts/bench_device.py [--budget 480] [--cases sleepstudy,batch,bootstrap,insteval,bigglmm]

Cases, each timed cold (its first call: tracing and compiling included) and warm (the
fastest of the repeats that fit the budget):

- sleepstudy   ``Reaction ~ Days + (Days | Subject)``, REML, one fit;
- batch        ``refit_many`` of that model to 10,000 simulated responses;
- bootstrap    ``fit.bootstrap(1000)`` of cbpp's binomial GLMM (Laplace);
- insteval     ``y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)``, ML, on data generated to
               InstEval's shape and levels (scripts/bench_scale.py);
- bigglmm      a 1e6-row bernoulli ``y ~ x + (1 | g)``, 1,000 groups (scripts/bench_bigglmm.py).

It prints the device, the cold and warm seconds of each case, their targets (from the
issues, measured against R on the 2-core CPU machine), and a one-line verdict.  The whole
run stays within ``--budget`` seconds (default 8 minutes): a case that would start past it is
skipped, saying so.  No peer runs here (the GPU machine has no R); the R timings quoted
are the ones measured side by side on the CPU machine (scripts/bench_many.py,
scripts/bench_inference.py, scripts/bench_scale.py, scripts/bench_bigglmm.py).

The gather / segment-sum strategy of every model lives in ``jaxglmm/core/ops.py``; set
``JAXGLMM_SEGMENT_SUM=onehot`` to route few-level segment sums through a one-hot matmul
(the workaround for jaxlib 0.10.2-0.11.0's slow GPU scatter-add, jax issue 38806) and compare.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _timed(fn, repeats: int, deadline: float):
    """(cold seconds, warm seconds or None, last result)."""
    t = time.perf_counter()
    out = fn(0)
    cold = time.perf_counter() - t
    warm = []
    for k in range(repeats):
        if time.perf_counter() + (warm[-1] if warm else cold) > deadline:
            break
        t = time.perf_counter()
        out = fn(k + 1)
        warm.append(time.perf_counter() - t)
    return cold, (min(warm) if warm else None), out


def case_sleepstudy(jg, deadline):
    data = jg.load_dataset("sleepstudy")
    model = jg.Model("Reaction ~ Days + (Days | Subject)", data)
    cold, warm, fit = _timed(lambda k: model.fit(), 5, deadline)
    return cold, warm, f"logLik {fit.loglik:.4f}"


def case_batch(jg, deadline, n=10_000):
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    fit = model.fit()
    Ys = [np.asarray(fit.simulate(n=n, seed=s, re_form=None), float).T for s in (1, 2, 3)]
    cold, warm, fits = _timed(lambda k: jg.refit_many(model, Ys[k % 3], progress=False), 2,
                              deadline)
    per = (warm if warm is not None else cold) / n * 1e3
    return cold, warm, f"{per:.4f} ms/fit, {float(np.mean(fits.converged)):.4f} converged"


def case_bootstrap(jg, deadline):
    model = jg.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                     jg.load_dataset("cbpp"), "binomial")
    fit = model.fit()
    cold, warm, boot = _timed(lambda k: fit.bootstrap(1000, seed=k + 1, progress=False), 2,
                              deadline)
    sd = boot[list(fit.fixef.index)].std()
    return cold, warm, "SD(fixef) " + ", ".join(f"{v:.3f}" for v in sd)


def case_insteval(jg, deadline):
    scale = _script("bench_scale")
    model = jg.Model(scale.INSTEVAL, scale.insteval_data(None))
    cold, warm, fit = _timed(lambda k: model.fit("ml"), 2, deadline)
    return cold, warm, f"logLik {fit.loglik:.4f}"


def case_bigglmm(jg, deadline):
    big = _script("bench_bigglmm")
    data = big.simulate(1_000_000, 1000)
    t = time.perf_counter()
    model = jg.Model("y ~ x + (1 | g)", data, "bernoulli")
    design = time.perf_counter() - t
    cold, warm, fit = _timed(lambda k: model.fit("laplace"), 1, deadline)
    return cold + design, warm, f"logLik {fit.loglik:.4f} (design {design:.2f} s)"


# name: (function, target text, cold target s, warm target s)
CASES = {
    "sleepstudy": (case_sleepstudy, "warm <= 8 ms (lme4's lmer ~8 ms)", None, 0.008),
    "batch": (case_batch, "warm <= 0.9 s = 0.09 ms/fit (100x lme4's refit loop); cold <= 4.2 s",
              4.2, 0.9),
    "bootstrap": (case_bootstrap, "cold <= 3.2 s (20x bootMer's 64 s); warm <= 0.64 s",
                  3.2, 0.64),
    "insteval": (case_insteval, "warm <= 1.5 s (lme4 15-20 s)", None, 1.5),
    "bigglmm": (case_bigglmm, "cold <= 5 s, design and compile included (glmer 98 s)",
                5.0, None),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget
    import jax
    jax.config.update("jax_enable_x64", True)
    import jaxglmm as jg
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}, "
          f"{len(jax.devices())} device(s)); jax {jax.__version__}; "
          f"segment sums: {os.environ.get('JAXGLMM_SEGMENT_SUM', 'scatter')}")
    met, missed, skipped = [], [], []
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name not in CASES:
            print(f"unknown case {name!r}; cases: {', '.join(CASES)}", file=sys.stderr)
            return 2
        fn, target, cold_t, warm_t = CASES[name]
        if time.perf_counter() > deadline - 20:
            print(f"{name:<11} skipped: the {args.budget:.0f} s budget is spent")
            skipped.append(name)
            continue
        try:
            cold, warm, info = fn(jg, deadline)
        except Exception as e:                    # noqa: BLE001 - report, go on
            print(f"{name:<11} FAILED: {type(e).__name__}: {e}")
            missed.append(name)
            continue
        ok = (cold_t is None or cold <= cold_t) and (warm_t is None or
                                                     (warm is not None and warm <= warm_t))
        (met if ok else missed).append(name)
        w = "n/a" if warm is None else f"{warm:.3f} s"
        print(f"{name:<11} cold {cold:8.3f} s  warm {w:>9}  [{'met' if ok else 'MISSED'}: "
              f"{target}]  {info}", flush=True)
    total = time.perf_counter() - start
    print(f"verdict: {len(met)} of {len(met) + len(missed)} cases met their targets "
          f"(met: {', '.join(met) or '-'}; missed: {', '.join(missed) or '-'}"
          + (f"; skipped: {', '.join(skipped)}" if skipped else "") + f") in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
