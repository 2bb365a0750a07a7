"""Benchmark: jaxglmm's inference on the batch engine against lme4, side by side in one run.

Rows:
  bootstrap   cbpp ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, 1,000
              parametric bootstrap refits: ``fit.bootstrap(n=1000)`` against
              ``bootMer(fit, fixef, nsim = 1000)``.
  power       a 5-size x 1,000-simulation LRT power curve of ``Days`` (effect 2) in
              ``Reaction ~ Days + (Days | Subject)`` (ML) against an R loop of ``simulate``
              and two ``refit``s per simulation, timed at one size and scaled to 5,000.
  profile     ``confint(method="profile")`` of sleepstudy (REML) and cbpp.
jaxglmm's "cold" is the first call in a fresh subprocess (compile included; the model's own
fit excluded), "warm" a second call with a new seed.  Ratios > 1: jaxglmm is faster.

Run: python scripts/bench_inference.py [--nboot 1000] [--npower 1000] [--r-power 200]
                                       [--skip-r]
Without Rscript (or lme4) the peer is skipped, saying so.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import jaxglmm as jg

DATA = Path(jg.__file__).parent / "datasets"
R_PEER = Path(__file__).resolve().with_name("bench_inference_lme4.R")
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
LMM = "Reaction ~ Days + (Days | Subject)"
SIZES = [6, 12, 18, 24, 30]


def section(case: str, n: int) -> dict:
    """One jaxglmm timing, as the first work of a fresh process (after the model's fit)."""
    if case == "bootstrap":
        fit = jg.Model(CBPP, jg.load_dataset("cbpp"), "binomial").fit()
        call = lambda seed: fit.bootstrap(n=n, seed=seed, progress=False)      # noqa: E731
    elif case == "power":
        fit = jg.Model(LMM, jg.load_dataset("sleepstudy")).fit("ml")
        call = lambda seed: fit.power("Days", effect=2, along="Subject", sizes=SIZES,  # noqa: E731
                                      nsim=n, seed=seed, progress=False)
    else:
        fits = [jg.Model(LMM, jg.load_dataset("sleepstudy")).fit(),
                jg.Model(CBPP, jg.load_dataset("cbpp"), "binomial").fit()]
        call = lambda seed: [f.confint("profile") for f in fits]               # noqa: E731
    t0 = time.perf_counter()
    first = call(1)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    call(2)
    warm = time.perf_counter() - t0
    out = {"cold": cold, "warm": warm}
    if case == "bootstrap":
        out["sd"] = first.drop(columns="converged").std().to_dict()
    elif case == "power":
        out["power"] = first["power"].tolist()
    return out


def run_section(case: str, n: int) -> dict | None:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--section", case,
                           "--n", str(n)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"jaxglmm {case} failed:\n{proc.stderr.strip()[-1500:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nboot", type=int, default=1000)
    ap.add_argument("--npower", type=int, default=1000)
    ap.add_argument("--r-power", type=int, default=200, help="simulations in lme4's loop")
    ap.add_argument("--skip-r", action="store_true")
    ap.add_argument("--section", choices=["bootstrap", "power", "profile"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.section:
        print(json.dumps(section(args.section, args.n)))
        return 0
    jx = {"bootstrap": run_section("bootstrap", args.nboot),
          "power": run_section("power", args.npower), "profile": run_section("profile", 0)}
    r = None
    if args.skip_r or shutil.which("Rscript") is None:
        print("peer skipped: " + ("--skip-r" if args.skip_r else
                                   "Rscript not found (install r-cran-lme4 to compare)"))
    else:
        proc = subprocess.run(["Rscript", str(R_PEER), str(DATA), str(args.nboot),
                               str(args.r_power)], capture_output=True, text=True)
        if proc.returncode != 0:
            print("peer skipped: the lme4 run failed:\n" + proc.stderr.strip()[-800:])
        else:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    if jx["bootstrap"]:
        peer = r and r["boot_seconds"]
        rows.append(("bootstrap", jx["bootstrap"], peer))
    if jx["power"]:
        peer = r and r["power_seconds"] / r["npower"] * args.npower * len(SIZES)
        rows.append(("power curve", jx["power"], peer))
    if jx["profile"]:
        peer = r and r["profile_lmm_seconds"] + r["profile_glmm_seconds"]
        rows.append(("profile (2 fits)", jx["profile"], peer))
    print(f"\n{'case':<18}{'cold s':>9}{'warm s':>9}{'lme4 s':>10}{'cold ratio':>12}{'warm ratio':>12}")
    for name, res, peer in rows:
        cells = [f"{res['cold']:.2f}", f"{res['warm']:.2f}"]
        cells += ([f"{peer:.2f}", f"{peer / res['cold']:.1f}", f"{peer / res['warm']:.1f}"]
                  if peer else ["skipped"] * 3)
        print(f"{name:<18}" + "".join(f"{c:>{w}}" for c, w in zip(cells, (9, 9, 10, 12, 12))))
    if jx["bootstrap"] and r:
        ours, theirs = jx["bootstrap"]["sd"], r["boot_sd"]
        names = {"Intercept": "(Intercept)", "period[2]": "period2", "period[3]": "period3",
                 "period[4]": "period4"}
        print("bootstrap SD, jaxglmm / bootMer: " + ", ".join(
            f"{k} {ours[k]:.4f}/{theirs[v]:.4f}" for k, v in names.items()))
    if jx["power"]:
        print(f"power by size {SIZES}: {np.round(jx['power']['power'], 3).tolist()}"
              + (f"; lme4's loop at 18 subjects ({r['npower']} sims): {r['power']:.3f}" if r else ""))
    print("lme4's power time is its loop's seconds per simulation times 5 sizes x nsim.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
