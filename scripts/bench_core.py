"""Benchmark: jaxglmm against lme4, timed side by side in one run.

Cases: sleepstudy REML (lmer), cbpp Laplace (glmer), and a parametric bootstrap of sleepstudy
(B refits of simulated responses: lme4 ``refit`` in a loop vs one vmapped ``refit_many``).
For jaxglmm, "cold" is the first call in a fresh process (tracing and XLA compilation
included), "warm" the median of later calls.  lme4's time is the median of repeated fits
inside one R session (R's start-up and package loading excluded).

Run: python scripts/bench_core.py [--reps 20] [--boot 200]
Without Rscript (or without lme4) the peer is skipped, saying so.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import jaxglmm as jg

DATA = Path(jg.__file__).parent / "datasets"

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
reps <- as.integer(args[1]); boot <- as.integer(args[2]); dir <- args[3]; simfile <- args[4]
ss <- read.csv(file.path(dir, "sleepstudy.csv"), colClasses = c(Subject = "character"))
cb <- read.csv(file.path(dir, "cbpp.csv"), colClasses = c(herd = "character", period = "character"))
med <- function(f) { t <- replicate(reps, system.time(f())[["elapsed"]]); median(t) }
t_ss <- med(function() lmer(Reaction ~ Days + (Days | Subject), ss, REML = TRUE))
t_cb <- med(function() glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb, family = binomial))
m <- lmer(Reaction ~ Days + (Days | Subject), ss, REML = TRUE)
sims <- as.matrix(read.csv(simfile, header = FALSE))
t_boot <- system.time(for (i in seq_len(nrow(sims))) refit(m, sims[i, ]))[["elapsed"]]
cat(sprintf('{"sleepstudy_reml": %.6f, "cbpp_laplace": %.6f, "bootstrap": %.6f}\n', t_ss, t_cb, t_boot))
"""


def time_jaxglmm(fn, reps: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    return cold, statistics.median(warm)


def run_lme4(reps: int, sims: np.ndarray) -> dict | None:
    if shutil.which("Rscript") is None:
        print("peer skipped: Rscript not found (install r-cran-lme4 to compare)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.R"
        script.write_text(R_SCRIPT)
        simfile = Path(tmp) / "sims.csv"
        np.savetxt(simfile, sims, delimiter=",")
        proc = subprocess.run(["Rscript", str(script), str(reps), str(len(sims)), str(DATA),
                               str(simfile)], capture_output=True, text=True)
    if proc.returncode != 0:
        print("peer skipped: lme4 run failed:\n" + proc.stderr.strip()[-800:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--boot", type=int, default=200)
    args = ap.parse_args(argv)

    sleep = jg.load_dataset("sleepstudy")
    cbpp = jg.load_dataset("cbpp")
    m_ss = jg.Model("Reaction ~ Days + (Days | Subject)", sleep)
    m_cb = jg.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial")
    rows = {}
    rows["sleepstudy_reml"] = time_jaxglmm(lambda: m_ss.fit("reml"), args.reps)
    rows["cbpp_laplace"] = time_jaxglmm(lambda: m_cb.fit("laplace"), args.reps)
    fit = m_ss.fit("reml")
    sims = fit.simulate(args.boot, seed=1).to_numpy().T
    t0 = time.perf_counter()
    jg.refit_many(m_ss, sims)
    boot_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    jg.refit_many(m_ss, sims)
    rows["bootstrap"] = (boot_cold, time.perf_counter() - t0)

    peer = run_lme4(args.reps, sims)
    print(f"\n{'case':<22}{'jaxglmm cold':>14}{'jaxglmm warm':>14}{'lme4':>12}{'lme4/jaxglmm warm':>20}")
    for case, (cold, warm) in rows.items():
        label = case if case != "bootstrap" else f"bootstrap x{args.boot}"
        if peer:
            ratio = f"{peer[case] / warm:>20.2f}"
            lme = f"{peer[case] * 1e3:>10.1f}ms"
        else:
            ratio, lme = f"{'skipped':>20}", f"{'skipped':>12}"
        print(f"{label:<22}{cold * 1e3:>12.1f}ms{warm * 1e3:>12.2f}ms{lme}{ratio}")
    print("\nratio > 1: jaxglmm is faster.  cold = first call in this process (compilation).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
