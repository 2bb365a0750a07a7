"""Satterthwaite's df at scale (issue 22): a crossed LMM of 7,500 rows (two factors of 300
and 250 levels, tests/data/crossed_7500.csv.gz from scripts/inference_edges_reference.R),
jaxglmm's coef_table(ddf="satterthwaite") after the fit (first call, with its compile, and
warm) side by side with lmerTest's (as_lmerModLmerTest: its Hessian and Jacobian by
numDeriv; then summary()).  R is skipped, and said so, where Rscript or lmerTest is absent.

    python scripts/bench_satterthwaite.py [--dense] [--repeat 5]

``--dense`` also times the same compiled program on the dense blocked cross-products (the
system models with one grouping factor use)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import jaxglmm as jg
from jaxglmm.core.lmm import lmm_data
from jaxglmm.inference import ddf

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "crossed_7500.csv.gz"
FORMULA = "y ~ x + (1 | a) + (1 | b)"
R_CODE = f"""
suppressMessages({{library(lme4); library(lmerTest)}})
cr <- read.csv("{DATA}")
ctrl <- lmerControl(optimizer = "bobyqa",
                    optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10, maxfun = 1e5))
t_fit <- system.time(m <- lme4::lmer({FORMULA}, cr, REML = TRUE, control = ctrl))[["elapsed"]]
t_conv <- system.time(mt <- as_lmerModLmerTest(m))[["elapsed"]]
t_sum <- system.time(co <- coef(summary(mt, ddf = "Satterthwaite")))[["elapsed"]]
cat(jsonlite::toJSON(list(fit = t_fit, hessian_jacobian = t_conv, summary = t_sum,
                          df = unname(co[, "df"])), auto_unbox = TRUE, digits = NA))
"""


def r_timings():
    if shutil.which("Rscript") is None:
        return None, "Rscript not found: lmerTest not timed"
    out = subprocess.run(["Rscript", "-e", R_CODE], capture_output=True, text=True)
    if out.returncode != 0:
        return None, f"R failed (lmerTest installed?): {out.stderr.strip().splitlines()[-1:]}"
    return json.loads(out.stdout.strip().splitlines()[-1]), ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", action="store_true",
                    help="also time the program on the dense blocked system")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    df = pd.read_csv(DATA)
    t0 = time.perf_counter()
    fit = jg.Model(FORMULA, df).fit("reml")
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = fit.coef_table(ddf="satterthwaite")
    first = time.perf_counter() - t0
    warm = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fit.coef_table(ddf="satterthwaite")
        warm.append(time.perf_counter() - t0)
    print(f"crossed LMM, {len(df)} rows, {df.a.nunique()} x {df.b.nunique()} levels, REML; "
          f"{jax.devices()[0].platform}")
    print(f"jaxglmm fit {t_fit:.2f} s; Satterthwaite (sparse system) first call {first:.2f} s "
          f"(compile included), warm {np.median(warm):.3f} s (median of {args.repeat})")
    print("jaxglmm df:", np.asarray(table["df"]))
    if args.dense:
        s, p = fit.model.structure, fit.model.design.n_fixef
        d = lmm_data(s, fit.model.arrays)
        run = jax.jit(lambda d, phi, L: ddf._satterthwaite(*ddf._phi_functions(s, p, d, True),
                                                           phi, L))
        phi = jnp.asarray(np.append(fit.theta, fit.sigma))
        t0 = time.perf_counter()
        jax.block_until_ready(run(d, phi, jnp.eye(p)))
        dense_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(run(d, phi, jnp.eye(p)))
        print(f"same program, dense blocked system: first call {dense_first:.2f} s, warm "
              f"{time.perf_counter() - t0:.3f} s")
    r, why = r_timings()
    if r is None:
        print(why)
        return
    print(f"lmerTest: lme4 fit {r['fit']:.2f} s; as_lmerModLmerTest (Hessian, Jacobian) "
          f"{r['hessian_jacobian']:.2f} s; summary {r['summary']:.3f} s; df {r['df']}")
    lt = r["hessian_jacobian"] + r["summary"]
    print(f"ratio jaxglmm / lmerTest (Satterthwaite work after the fit): first call "
          f"{first / lt:.1f}x, warm {np.median(warm) / lt:.2f}x")


if __name__ == "__main__":
    main()
