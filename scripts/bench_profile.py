"""Profile intervals of a crossed Poisson GLMM, jaxglmm against lme4, side by side.

    python scripts/bench_profile.py [--rows 3000] [--levels 60 40]

Simulates ``y ~ x + (1 | a) + (1 | b)`` (Poisson, log link), fits it by Laplace and times
``fit.confint("profile")`` in this process: cold (compiles included) and warm (a second
same-shape dataset), next to lme4's ``confint(profile(glmer(...)))`` on the same rows (R
is skipped, saying so, when ``Rscript`` or lme4 is absent).  Prints the intervals of both
and the largest relative difference."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import jaxglmm as jg

FORMULA = "y ~ x + (1 | a) + (1 | b)"
R_CODE = r"""
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(TRUE)
d <- read.csv(args[1]); d$a <- factor(d$a); d$b <- factor(d$b)
m <- glmer(y ~ x + (1 | a) + (1 | b), d, poisson,
           control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10)))
t0 <- proc.time()[["elapsed"]]
ci <- confint(profile(m, signames = FALSE))
secs <- proc.time()[["elapsed"]] - t0
writeLines(toJSON(list(seconds = secs, rows = rownames(ci), lower = ci[, 1], upper = ci[, 2]),
                  digits = NA, auto_unbox = TRUE), args[2])
"""
NAMES = {"sd_(Intercept)|a": "sd_a__Intercept", "sd_(Intercept)|b": "sd_b__Intercept",
         "(Intercept)": "Intercept", "x": "x"}


def simulate(n: int, la: int, lb: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, la, n), rng.integers(0, lb, n)
    x = rng.normal(size=n)
    eta = 0.5 + 0.3 * x + 0.4 * rng.normal(size=la)[a] + 0.25 * rng.normal(size=lb)[b]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x,
                         "a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b]})


def run_r(data: pd.DataFrame):
    if shutil.which("Rscript") is None:
        print("R: Rscript not found, lme4 skipped")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        csv, out, code = Path(tmp, "d.csv"), Path(tmp, "out.json"), Path(tmp, "p.R")
        data.to_csv(csv, index=False)
        code.write_text(R_CODE)
        t = time.perf_counter()
        proc = subprocess.run(["Rscript", str(code), str(csv), str(out)], capture_output=True,
                              text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print("R: lme4 failed, skipped:", proc.stderr.strip().splitlines()[-1:])
            return None
        res = json.loads(out.read_text())
    res["wall"] = wall
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--levels", type=int, nargs=2, default=(60, 40))
    args = ap.parse_args()
    la, lb = args.levels
    data = simulate(args.rows, la, lb, 1)
    print(f"crossed Poisson {FORMULA}: {args.rows} rows, {la} x {lb} levels")
    warnings.simplefilter("ignore")
    fit = jg.Model(FORMULA, data, "poisson").fit("laplace")
    t = time.perf_counter()
    ci = fit.confint("profile")
    cold = time.perf_counter() - t
    fit2 = jg.Model(FORMULA, simulate(args.rows, la, lb, 2), "poisson").fit("laplace")
    t = time.perf_counter()
    fit2.confint("profile")
    warm = time.perf_counter() - t
    print(f"jaxglmm profile: cold {cold:.2f} s (compiles included), warm {warm:.2f} s")
    print(ci)
    ref = run_r(data)
    if ref is None:
        return
    print(f"lme4 profile: {ref['seconds']:.2f} s (confint(profile(m)); Rscript wall "
          f"{ref['wall']:.2f} s)   ratio jaxglmm/lme4: cold {cold / ref['seconds']:.2f}, "
          f"warm {warm / ref['seconds']:.2f}")
    worst = 0.0
    for row, lo, hi in zip(ref["rows"], ref["lower"], ref["upper"]):
        got = ci.loc[NAMES[row]].to_numpy(float)
        rel = np.abs(got - [lo, hi]) / np.maximum(np.abs([lo, hi]), 1e-12)
        worst = max(worst, float(np.max(rel)))
        print(f"  {NAMES[row]:18s} jaxglmm [{got[0]:.6f}, {got[1]:.6f}]   "
              f"lme4 [{lo:.6f}, {hi:.6f}]")
    print(f"largest relative difference from lme4: {worst:.2e}")


if __name__ == "__main__":
    main()
