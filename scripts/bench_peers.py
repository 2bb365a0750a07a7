"""jaxglmm side by side with glmm (PyPI, a Rust core; the optional extra ``bench``): the
first fit in a new process with an empty disk cache, the first fit in a second process
(the cache filled by the first), and the warm fit in each of the two processes (the first
process's program is compiled without XLA's optimizations; the second loads the optimized
one, compiled in the background by the first once a program is reused), each case in fresh
processes.

    python scripts/bench_peers.py [--repeat 20]

    python scripts/bench_peers.py --grid [--sizes 30,300,3000]

Times exclude ``import``; a peer that is not installed is skipped, and said so.  Benchmark on
a quiet machine (``uptime``): the ratios are from one run.  ``--grid`` fits a grid of
generated designs (families, nesting, crossing, slopes, group counts, skewed group sizes and
rare events) with both libraries, warm (jaxglmm's after its background optimization of the
reused program), and prints the distribution of the ratios and the slowest designs.
``--startup``: ``import jaxglmm`` against ``import jax``, and a whole ``jaxglmm fit`` run
against glmm's one-liner.  ``--batch 2000``: refit_many against a glmm loop, cold and warm.
``--large``: InstEval and the 1e6-row bernoulli GLMM, first and warm fits.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pandas as pd

CASES = {
    "sleepstudy REML": dict(data="sleepstudy", formula="Reaction ~ Days + (Days | Subject)",
                            family="gaussian", method="reml"),
    "cbpp Laplace": dict(data="cbpp", formula="cbind(incidence, size - incidence) ~ period + "
                         "(1 | herd)", family="binomial", method="laplace"),
}

# each script defines one() (a whole fit, design included) and ends with this timing
TIMING = textwrap.dedent("""
    t = time.perf_counter(); fit = one(); first = time.perf_counter() - t
    warm = []
    for _ in range(repeat):
        t = time.perf_counter(); one(); warm.append(time.perf_counter() - t)
    print(json.dumps({"first": first, "warm": sorted(warm)[len(warm) // 2],
                      "loglik": float(fit.loglik)}))
""")

JAXGLMM = textwrap.dedent("""
    import json, sys, time
    import pandas as pd
    import jaxglmm as jg
    case, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
    df = pd.read_pickle(case["path"]) if "path" in case else jg.load_dataset(case["data"])
    def one():
        return jg.Model(case["formula"], df, family=case["family"]).fit(case["method"])
""") + TIMING

GLMM = textwrap.dedent("""
    import json, sys, time
    import glmm
    import pandas as pd
    import jaxglmm as jg
    case, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
    df = pd.read_pickle(case["path"]) if "path" in case else jg.load_dataset(case["data"])
    if case["family"] == "binomial" and "data" in case:
        df = df.assign(y=df["incidence"] / df["size"])
        formula, kw = "y ~ period + (1 | herd)", {"weights": df["size"].to_numpy(float)}
    elif case["family"] == "binomial":
        formula, kw = case["formula"], {}
    else:
        formula, kw = case["formula"], {"reml": case["method"] == "reml"}
    def one():
        return glmm.fit(df, formula, family=case["family"], **kw)
""") + TIMING


# --large: InstEval's shape (scripts/bench_scale.py's generated data, or lme4's own exported by
# scripts/bench_scale_lme4.R: --insteval CSV) and the 1e6-row bernoulli GLMM of
# scripts/bench_bigglmm.py, each a first fit and warm refits in fresh processes
LARGE = {
    "InstEval ML": dict(formula="y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)",
                        family="gaussian", method="ml"),
    "bernoulli 1e6 rows": dict(formula="y ~ x + (1 | g)", family="binomial",
                               method="laplace"),
}


def run_large(peer: bool, insteval_csv: str | None, repeat: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_bigglmm import simulate
    from bench_scale import insteval_data
    frames = {"InstEval ML": insteval_data(insteval_csv),
              "bernoulli 1e6 rows": simulate(1_000_000, 1000)}
    print(f"{'case':20s} {'':8s} {'first':>9s} {'warm':>9s} {'logLik':>14s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in LARGE.items():
            path = os.path.join(tmp, "data.pkl")
            frames[name].to_pickle(path)
            case = dict(case, path=path)
            rows = [("jaxglmm", _run(JAXGLMM, case, repeat, os.path.join(tmp, name)))]
            if peer:
                rows.append(("glmm", _run(GLMM, case, repeat, tmp)))
            for who, r in rows:
                print(f"{name:20s} {who:8s} {r['first']:8.2f}s {r['warm']:8.2f}s "
                      f"{r['loglik']:14.4f}")
            if peer:
                (_, m), (_, g) = rows
                print(f"{'':20s} {'ratio':8s} {m['first'] / g['first']:8.2f}x "
                      f"{m['warm'] / g['warm']:8.2f}x {m['loglik'] - g['loglik']:+14.2e}")


def _run(script: str, case: dict, repeat: int, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAXGLMM_NO_CACHE"}
    env["JAXGLMM_CACHE_DIR"] = cache
    out = subprocess.run([sys.executable, "-c", script, json.dumps(case), str(repeat)],
                         capture_output=True, text=True, env=env, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _have(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True).returncode == 0


# ----------------------------------------------------------------------------- start-up
def _wall(argv, env=None, repeat: int = 3) -> float:
    """The median wall time of a whole process."""
    import time
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        times.append(time.perf_counter() - t)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
    return sorted(times)[len(times) // 2]


def run_startup(peer: bool) -> None:
    """``import jax`` against ``import jaxglmm``, and a whole YAML run of the CLI (its
    cache filled by a first run) against glmm's one-liner in a fresh process."""
    py = sys.executable
    jax_s = _wall([py, "-c", "import jax"])
    mine = _wall([py, "-c", "import jaxglmm"])
    print(f"import jax {jax_s:.2f} s, import jaxglmm {mine:.2f} s ({mine / jax_s:.2f}x jax)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(root, "configs", "sleepstudy.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "JAXGLMM_NO_CACHE"}
        env["JAXGLMM_CACHE_DIR"] = os.path.join(tmp, "cache")
        exe = os.path.join(os.path.dirname(py), "jaxglmm")      # the console script
        cli = ([exe] if os.path.exists(exe) else [py, "-m", "jaxglmm.cli"]) + [
            "fit", config, "--output", os.path.join(tmp, "out"), "--force"]
        first = _wall(cli, env, repeat=1)
        again = _wall(cli, env)
    line = f"jaxglmm fit configs/sleepstudy.yaml: {again:.2f} s ({first:.2f} s the first time)"
    if peer:
        csv = os.path.join(root, "jaxglmm", "datasets", "sleepstudy.csv")
        one = (f"import glmm, pandas; glmm.fit(pandas.read_csv({csv!r}), "
               "'Reaction ~ Days + (Days | Subject)')")
        theirs = _wall([py, "-c", one])
        line += f"; glmm's one-liner {theirs:.2f} s ({again / theirs:.1f}x)"
    print(line)


# 2,000 sleepstudy responses simulated from the REML fit, refitted: from the data to the last
# fit in a fresh process with an empty cache (cold), then again in the same process (warm)
BATCH = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import jaxglmm as jg
    n = int(sys.argv[1])
    t0 = time.perf_counter()
    df = jg.load_dataset("sleepstudy")
    fit = jg.Model("Reaction ~ Days + (Days | Subject)", df).fit("reml")
    Y = np.asarray(fit.simulate(n, seed=1)).T
    t1 = time.perf_counter()
    WHO
    cold = time.perf_counter() - t0
    t = time.perf_counter(); again = refit(); warm = time.perf_counter() - t
    print(json.dumps({"cold": cold, "simulate": t1 - t0, "warm": warm, "check": check}))
""")
BATCH_JAXGLMM = BATCH.replace("WHO", textwrap.dedent("""
    refit = lambda: jg.refit_many(fit, Y)
    many = refit()
    check = float(np.asarray(many.fixef)[:, 1].mean())
"""))
BATCH_GLMM = BATCH.replace("WHO", textwrap.dedent("""
    import glmm
    def refit():
        return [glmm.fit(df.assign(Reaction=y), "Reaction ~ Days + (Days | Subject)")
                for y in Y]
    fits = refit()
    check = float(np.mean([f.beta[1] for f in fits]))
"""))


def run_batch(n: int, peer: bool) -> None:
    def go(script):
        with tempfile.TemporaryDirectory() as cache:
            env = {k: v for k, v in os.environ.items() if k != "JAXGLMM_NO_CACHE"}
            env["JAXGLMM_CACHE_DIR"] = cache
            out = subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True,
                                 text=True, env=env, timeout=3600)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    mine = go(BATCH_JAXGLMM)
    line = (f"{n} sleepstudy refits: jaxglmm refit_many cold {mine['cold']:.2f} s (of which "
            f"the first fit and simulating {mine['simulate']:.2f} s), warm "
            f"{mine['warm'] / n * 1e3:.3f} ms a fit")
    if peer:
        theirs = go(BATCH_GLMM)
        line += (f"; glmm loop cold {theirs['cold']:.2f} s, warm {theirs['warm'] / n * 1e3:.3f} "
                 f"ms a fit; cold {mine['cold'] / theirs['cold']:.2f}x, warm "
                 f"{theirs['warm'] / mine['warm']:.1f}x faster (mean slope "
                 f"{mine['check']:.4f} and {theirs['check']:.4f})")
    print(line)


# ----------------------------------------------------------------------------- the grid
STRUCTURES = {
    "1|a": "x + (1 | a)",
    "x|a": "x + (x | a)",
    "q3": "x + z + (x + z | a)",
    "q4": "x + z + w + (x + z + w | a)",
    "nested": "x + (1 | a) + (1 | a:b)",
    "crossed": "x + (1 | a) + (1 | b)",
    "three": "x + (1 | a) + (1 | b) + (1 | c)",
}
METHODS = {"gaussian": "reml", "binomial": "laplace", "poisson": "laplace"}


def grid_designs(sizes) -> list[dict]:
    """Every family with every structure at every size, then skewed group sizes and rare
    events at the middle size."""
    out = [dict(family=f, structure=k, groups=g, variant="")
           for g in sizes for f in METHODS for k in STRUCTURES]
    mid = sizes[len(sizes) // 2]
    out += [dict(family=f, structure=k, groups=mid, variant="skewed")
            for f in METHODS for k in ("1|a", "x|a", "crossed")]
    out += [dict(family=f, structure=k, groups=mid, variant="rare")
            for f in ("binomial", "poisson") for k in ("1|a", "x|a", "nested")]
    return out


def grid_data(design: dict, seed: int) -> pd.DataFrame:
    """About ten rows a group (skewed: geometric sizes of the same mean); x, z, w standard
    normal; random intercepts SD 0.5 and slopes SD 0.3; ``b`` crossed with ``a`` (or three
    levels within each ``a`` for the nested design), ``c`` a third crossed factor."""
    rng = np.random.default_rng(seed)
    g = design["groups"]
    sizes = (rng.geometric(0.1, g) if design["variant"] == "skewed" else np.full(g, 10))
    a = np.repeat(np.arange(g), sizes)
    n = a.size
    x, z, w = rng.normal(size=(3, n))
    b = rng.integers(0, 3, n) if design["structure"] == "nested" else \
        rng.integers(0, max(g // 2, 2), n)
    c = rng.integers(0, max(g // 3, 2), n)
    eta = 0.5 + 0.3 * x + 0.2 * z - 0.1 * w
    eta += rng.normal(0, 0.5, g)[a] + rng.normal(0, 0.3, g)[a] * x
    eta += rng.normal(0, 0.4, 3 * g)[a * 3 + b] if design["structure"] == "nested" else \
        rng.normal(0, 0.4, b.max() + 1)[b]
    eta += rng.normal(0, 0.3, c.max() + 1)[c]
    if design["variant"] == "rare":
        eta -= 3.5
    fam = design["family"]
    y = (100 + 10 * eta + rng.normal(0, 10, n) if fam == "gaussian" else
         rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float) if fam == "binomial" else
         rng.poisson(np.exp(eta)).astype(float))
    return pd.DataFrame({"y": y, "x": x, "z": z, "w": w, "a": [f"a{i}" for i in a],
                         "b": [f"b{i}" for i in b], "c": [f"c{i}" for i in c]})


# Each worker reads the designs (a pickle of (design, data) pairs) and prints one JSON line
# per design: the first fit (compile included) and the median warm fit.
GRID_WORKER = textwrap.dedent("""
    import json, pickle, sys, time, warnings
    warnings.simplefilter("ignore")
    WHO
    designs = pickle.load(open(sys.argv[1], "rb"))
    for design, df in designs:
        formula = "y ~ " + design["formula"]
        try:
            t = time.perf_counter(); fit = one(df, formula, design); first = time.perf_counter() - t
            settle(df, formula, design)
            warm, spent = [], 0.0
            while len(warm) < 3 or (spent < 0.5 and len(warm) < 30):
                t = time.perf_counter(); one(df, formula, design)
                warm.append(time.perf_counter() - t); spent += warm[-1]
            out = {"first": first, "warm": sorted(warm)[len(warm) // 2],
                   "loglik": float(fit.loglik)}
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
        print(json.dumps(out), flush=True)
""")
GRID_JAXGLMM = GRID_WORKER.replace("WHO", textwrap.dedent("""
    import jaxglmm as jg
    from jaxglmm.fit import stored
    def one(df, formula, design):
        return jg.Model(formula, df, family=design["family"]).fit(design["method"])
    def settle(df, formula, design):     # reused: optimized in the background; wait for it
        one(df, formula, design)
        stored.wait()
"""))
GRID_GLMM = GRID_WORKER.replace("WHO", textwrap.dedent("""
    import glmm
    def one(df, formula, design):
        return glmm.fit(df, formula, family=design["family"])
    def settle(df, formula, design):
        pass
"""))


def _grid_run(script: str, path: str, cache: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "JAXGLMM_NO_CACHE"}
    env["JAXGLMM_CACHE_DIR"] = cache
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True,
                         env=env, timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return [json.loads(line) for line in out.stdout.strip().splitlines()]


def run_grid(sizes, peer: bool, only: str = "") -> None:
    designs = grid_designs(sizes)
    if only:            # some structures only (--only nested,crossed)
        designs = [d for d in designs if d["structure"] in only.split(",")]
    pairs = []
    for k, d in enumerate(designs):
        d = dict(d, formula=STRUCTURES[d["structure"]], method=METHODS[d["family"]])
        pairs.append((d, grid_data(d, seed=k)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "designs.pkl")
        pd.to_pickle(pairs, path)
        mine = _grid_run(GRID_JAXGLMM, path, os.path.join(tmp, "cache"))
        theirs = _grid_run(GRID_GLMM, path, tmp) if peer else [{}] * len(pairs)
    rows = []
    print(f"{'design':40s} {'rows':>6s} {'jaxglmm first':>13s} {'warm':>9s} "
          f"{'glmm warm':>9s} {'ratio':>6s}  logLik difference")
    for (d, df), m, g in zip(pairs, mine, theirs):
        name = f"{d['family']} {d['structure']} {d['groups']} {d['variant']}".strip()
        if "error" in m or "error" in g or not g:
            print(f"{name:40s} {len(df):6d} {m.get('error', '')} {g.get('error', '')}")
            continue
        ratio = m["warm"] / g["warm"]
        rows.append((ratio, name, m["first"] / g["first"]))
        print(f"{name:40s} {len(df):6d} {m['first']:12.2f}s {m['warm'] * 1e3:7.2f}ms "
              f"{g['warm'] * 1e3:7.2f}ms {ratio:6.1f}x  {m['loglik'] - g['loglik']:+.2e}")
    if rows:
        warm = np.array([r[0] for r in rows])
        first = np.array([r[2] for r in rows])
        q = lambda v: "  ".join(f"{p}% {np.percentile(v, p):.1f}x" for p in (0, 25, 50, 75, 100))
        print(f"\nwarm fit, jaxglmm / glmm over {len(rows)} designs: {q(warm)}")
        print(f"first fit in a process (jaxglmm compiles), jaxglmm / glmm: {q(first)}")
        print("slowest warm ratios: " + "; ".join(f"{n} {r:.1f}x" for r, n, _ in
                                                  sorted(rows, reverse=True)[:8]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--grid", action="store_true", help="the grid of designs, warm")
    parser.add_argument("--sizes", default="30,300,3000", help="the grid's group counts")
    parser.add_argument("--only", default="", help="the grid's structures to run (e.g. nested)")
    parser.add_argument("--startup", action="store_true", help="import and CLI times")
    parser.add_argument("--large", action="store_true",
                        help="InstEval and the 1e6-row bernoulli GLMM, first and warm")
    parser.add_argument("--insteval", default=None, metavar="CSV",
                        help="lme4's InstEval (scripts/bench_scale_lme4.R exports it)")
    parser.add_argument("--batch", type=int, default=0, metavar="N",
                        help="N sleepstudy refits (refit_many against glmm's loop)")
    args = parser.parse_args(argv)
    peer = _have("glmm")
    if not peer:
        print("glmm is not installed (pip install '.[bench]'): jaxglmm alone")
    if args.grid:
        run_grid([int(v) for v in args.sizes.split(",")], peer, args.only)
        return
    if args.startup:
        run_startup(peer)
        return
    if args.large:
        run_large(peer, args.insteval, min(args.repeat, 3))
        return
    if args.batch:
        run_batch(args.batch, peer)
        return
    print(f"{'case':18s} {'':8s} {'first, empty cache':>19s} {'second process':>15s} "
          f"{'warm':>9s} {'warm, 2nd':>10s} {'logLik':>12s}")
    for name, case in CASES.items():
        with tempfile.TemporaryDirectory() as cache:
            cold = _run(JAXGLMM, case, args.repeat, cache)
            second = _run(JAXGLMM, case, args.repeat, cache)
        rows = [("jaxglmm", cold, second)]
        if peer:
            with tempfile.TemporaryDirectory() as cache:
                g = _run(GLMM, case, args.repeat, cache)
            rows.append(("glmm", g, g))
        for who, c, s in rows:
            print(f"{name:18s} {who:8s} {c['first'] * 1e3:17.1f}ms {s['first'] * 1e3:13.1f}ms "
                  f"{c['warm'] * 1e3:7.2f}ms {s['warm'] * 1e3:8.2f}ms {c['loglik']:12.4f}")
        if peer:
            g = rows[1][1]
            print(f"{'':18s} {'ratio':8s} {cold['first'] / g['first']:18.1f}x "
                  f"{second['first'] / g['first']:14.1f}x {cold['warm'] / g['warm']:8.1f}x "
                  f"{second['warm'] / g['warm']:9.1f}x {'(jaxglmm / glmm)':>12s}")


if __name__ == "__main__":
    main()
