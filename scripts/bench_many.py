"""Benchmark: jaxglmm's batch engine against lme4's refit loop, side by side in one run.

Rows of the table:
  LMM refit     ``refit_many`` of sleepstudy ``Reaction ~ Days + (Days | Subject)`` (REML) to
                N responses simulated from the sleepstudy fit (``re_form=None``).
  GLMM refit    ``refit_many`` of cbpp ``cbind(incidence, size - incidence) ~ period + (1 | herd)``
                (binomial, Laplace) to N simulated incidence counts.
  fit_many by=  ``fit_many(formula, long_table, by="sim")`` on the LMM's N datasets stacked into
                one long table (design construction included).
For jaxglmm, "cold" is the first call in a fresh subprocess (tracing and XLA compilation
included; ``import jax`` and, for refit_many, building the Model excluded) and "warm" a second
call on a fresh batch of the same shape (seed 2).  Each subprocess reports its own peak RSS
(VmHWM: ru_maxrss would include the parent's, inherited across fork + exec).
lme4 fits once, then loops ``refit(fit, y)`` over the first --r-subset datasets inside one R
session (start-up, loading and the initial fit excluded); its time for N fits is extrapolated
from that ms/fit.  warm ratio = lme4 ms/fit / jaxglmm warm ms/fit; cold ratio = lme4 time for N
fits / jaxglmm cold seconds; > 1 means jaxglmm is faster.  Accuracy: the first 20 datasets'
fixef, theta and log-likelihood (REML criterion / -2 for REML) are compared with lme4's: fresh
lmer fits for the LMM (lme4 1.1-31's refit of a REML fit is biased, see bench_many_lme4.R),
refit estimates for the GLMM.

Run: python scripts/bench_many.py [--n-lmm 10000] [--n-glmm 1000] [--r-subset 500]
                                  [--r-subset-glmm 200] [--skip-r] [--quick]
Without Rscript (or lme4) the peer is skipped, saying so.
"""
from __future__ import annotations

import argparse
import inspect
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import jaxglmm as jg

DATA = Path(jg.__file__).parent / "datasets"
R_PEER = Path(__file__).resolve().with_name("bench_many_lme4.R")
LMM = "Reaction ~ Days + (Days | Subject)"
GLMM = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
N_CHECK = 20      # datasets compared with lme4


def peak_rss_mib() -> float:
    """This process's peak RSS.  Linux's ru_maxrss survives fork + exec (a child reports at
    least its parent's peak at fork), so the per-process VmHWM is read where there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024     # bytes / KiB


def model(case: str) -> jg.Model:
    if case == "glmm":
        return jg.Model(GLMM, jg.load_dataset("cbpp"), "binomial")
    return jg.Model(LMM, jg.load_dataset("sleepstudy"))


def long_table(Y: np.ndarray) -> pd.DataFrame:
    """N sleepstudy copies stacked, column ``sim`` = dataset id, Reaction = simulated."""
    ss = jg.load_dataset("sleepstudy")
    N, n = Y.shape
    return pd.DataFrame({"sim": np.repeat(np.arange(N), n),
                         "Reaction": Y.reshape(-1),
                         "Days": np.tile(ss["Days"].to_numpy(), N),
                         "Subject": np.tile(ss["Subject"].to_numpy(), N)})


def estimates(fits, k: int) -> dict:
    """fixef, theta (lme4's scale, from the full per-dataset result) and loglik of fits[:k]."""
    k = min(k, len(fits))
    out = {"fixef": np.asarray(fits.fixef, float)[:k].tolist(),
           "loglik": np.asarray(fits.loglik, float)[:k].tolist()}
    try:
        out["theta"] = [np.asarray(fits.result(i).theta, float).tolist() for i in range(k)]
    except Exception as e:                      # noqa: BLE001 - compare fixef/loglik only
        out["theta_error"] = repr(e)
    return out


def seconds_of(fits) -> dict:
    s = getattr(fits, "seconds", None)
    return dict(s) if isinstance(s, dict) else {"total": s}


def section(case: str, tmp: Path) -> dict:
    """One jaxglmm timing, meant to run as the first work of a fresh process."""
    src = "glmm" if case == "glmm" else "lmm"
    y1, y2 = (np.load(tmp / f"{src}_y{k}.npy") for k in (1, 2))
    if case == "by":
        if "by" not in inspect.signature(jg.fit_many).parameters:
            return {"unavailable": "fit_many has no by= parameter"}
        d1, d2 = long_table(y1), long_table(y2)
        call = lambda d: jg.fit_many(LMM, d, by="sim")                      # noqa: E731
        args = (d1, d2)
    else:
        m = model(case)
        call = lambda y: jg.refit_many(m, y)                                # noqa: E731
        args = (y1, y2)
    t0 = time.perf_counter()
    try:
        fits = call(args[0])
    except TypeError as e:
        if case == "by":
            return {"unavailable": f"TypeError: {e}"}
        raise
    cold = time.perf_counter() - t0
    out = {"n": len(fits), "cold": cold, "cold_seconds": seconds_of(fits),
           "rss_cold": peak_rss_mib(), "first": estimates(fits, N_CHECK)}
    t0 = time.perf_counter()
    fits2 = call(args[1])
    out.update(warm=time.perf_counter() - t0, warm_seconds=seconds_of(fits2), rss=peak_rss_mib())
    return out


def run_section(case: str, tmp: Path) -> dict | None:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--section", case,
                           "--tmp", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"jaxglmm {case} section failed:\n" + proc.stderr.strip()[-1500:])
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if "unavailable" in res:
        print(f"fit_many(by=) not available ({res['unavailable']})")
        return None
    if "theta_error" in res["first"]:
        print(f"  {case}: no theta to compare ({res['first']['theta_error']})")
    print(f"  {case}: cold {res['cold']:.2f}s, warm {res['warm']:.2f}s, "
          f"peak RSS {res['rss']:.0f} MiB (after cold call {res['rss_cold']:.0f} MiB); "
          f"seconds cold {res['cold_seconds']}, warm {res['warm_seconds']}")
    return res


def run_lme4(case: str, Y: np.ndarray, tmp: Path) -> dict | None:
    yfile, estfile = tmp / f"r_{case}_y.csv", tmp / f"r_{case}_est.csv"
    np.savetxt(yfile, Y, delimiter=",", fmt="%.17g")
    proc = subprocess.run(["Rscript", str(R_PEER), case, str(DATA), str(yfile), str(estfile),
                           str(N_CHECK)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"peer skipped for {case}: lme4 run failed:\n" + proc.stderr.strip()[-800:])
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["est"] = pd.read_csv(estfile)
    print(f"  lme4 {case}: {res['n']} refits in {res['seconds']:.2f}s = "
          f"{res['ms_per_fit']:.2f} ms/fit ({res['warnings']} warnings; max|theta| refit vs "
          f"fresh fit on the first {len(res['est'])}: {res['refit_vs_fresh']:.2g})")
    return res


def diffs(jax_res: dict, est: pd.DataFrame) -> dict:
    """max |jaxglmm - lme4| over the datasets both have estimates for."""
    first = jax_res["first"]
    k = min(len(first["fixef"]), len(est))
    fx = est.filter(like="fixef").to_numpy()[:k]
    out = {"fixef": np.abs(np.asarray(first["fixef"])[:k] - fx).max(),
           "loglik": np.abs(np.asarray(first["loglik"])[:k] - est["loglik"].to_numpy()[:k]).max()}
    if "theta" in first:
        th = est.filter(like="theta").to_numpy()[:k]
        out["theta"] = np.abs(np.asarray(first["theta"])[:k] - th).max()
    out["k"] = k
    return out


def simulate(case: str, N: int, tmp: Path) -> np.ndarray:
    fit = model(case).fit()
    for seed in (1, 2):
        Y = np.asarray(fit.simulate(n=N, seed=seed, re_form=None), float).T   # (N, nobs)
        np.save(tmp / f"{case}_y{seed}.npy", Y)
        if seed == 1:
            first = Y
    return first


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-lmm", type=int, default=10000)
    ap.add_argument("--n-glmm", type=int, default=1000)
    ap.add_argument("--r-subset", type=int, default=500, help="LMM datasets lme4 refits")
    ap.add_argument("--r-subset-glmm", type=int, default=200, help="GLMM datasets lme4 refits")
    ap.add_argument("--skip-r", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke test: N = 200 / 100")
    ap.add_argument("--section", choices=["lmm", "glmm", "by"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.section:                                    # child process: one jaxglmm timing
        print(json.dumps(section(args.section, args.tmp)))
        return 0
    if args.quick:
        args.n_lmm, args.n_glmm = 200, 100
        args.r_subset, args.r_subset_glmm = min(args.r_subset, 50), min(args.r_subset_glmm, 25)
    N = {"lmm": args.n_lmm, "glmm": args.n_glmm, "by": args.n_lmm}
    sub = {"lmm": min(args.r_subset, args.n_lmm), "glmm": min(args.r_subset_glmm, args.n_glmm)}
    peer = not args.skip_r
    if peer and shutil.which("Rscript") is None:
        print("peer skipped: Rscript not found (install r-cran-lme4 to compare)")
        peer = False

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"simulating {N['lmm']} LMM and {N['glmm']} GLMM datasets (twice: seeds 1, 2)")
        Y = {case: simulate(case, N[case], tmp) for case in ("lmm", "glmm")}
        print("jaxglmm, each case in a fresh subprocess:")
        jx = {case: run_section(case, tmp) for case in ("lmm", "glmm", "by")}
        r = {}
        if peer:
            print("lme4 refit loops:")
            r = {case: run_lme4(case, Y[case][:sub[case]], tmp) for case in ("lmm", "glmm")}

    labels = {"lmm": "LMM refit", "glmm": "GLMM refit", "by": "fit_many by="}
    head = ["case", "N", "cold s", "cold ms/fit", "warm ms/fit", "lme4 ms/fit", "warm ratio",
            "cold ratio", "RSS MiB", "max|diff|"]
    widths = [14, 7, 9, 13, 13, 13, 12, 12, 9, 11]
    print("\n" + "".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in
                         enumerate(zip(head, widths))))
    notes = []
    for case, label in labels.items():
        res, peer_res = jx[case], r.get("glmm" if case == "glmm" else "lmm")
        n = N[case]
        cells = [label, str(n)]
        if res is None:
            cells += ["n/a"] * 3
        else:
            cells += [f"{res['cold']:.2f}", f"{1e3 * res['cold'] / n:.3f}",
                      f"{1e3 * res['warm'] / n:.3f}"]
        if peer_res is None:
            cells += ["skipped"] * 3
        else:
            ms = peer_res["ms_per_fit"]
            cells.append(f"{ms:.2f}")
            cells += (["n/a"] * 2 if res is None else
                      [f"{ms / (1e3 * res['warm'] / n):.1f}", f"{ms * n / 1e3 / res['cold']:.1f}"])
        cells.append("n/a" if res is None else f"{res['rss']:.0f}")
        if res is None or peer_res is None:
            cells.append("n/a")
        else:
            d = diffs(res, peer_res["est"])
            cells.append(f"{max(d['fixef'], d.get('theta', 0.0)):.2e}")
            notes.append(f"{label}: first {d['k']} datasets, max|dfixef| {d['fixef']:.2e}, "
                         f"max|dtheta| {d.get('theta', float('nan')):.2e}, "
                         f"max|dloglik| {d['loglik']:.2e}")
        print("".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in
                      enumerate(zip(cells, widths))))
    print("\ncold = first call in a fresh process (compile included); warm = second call, seed 2.")
    if peer:
        print(f"lme4 ms/fit from {sub['lmm']} LMM / {sub['glmm']} GLMM refits, extrapolated to N "
              "for the cold ratio; fit_many by= is compared with the LMM refit loop.")
    print("ratio > 1: jaxglmm is faster.  max|diff| = max over fixef and theta vs lme4 (LMM: fresh "
          "lmer fits, as lme4 1.1-31's REML refit uses p = 1; GLMM: refit).")
    for note in notes:
        print("  " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
