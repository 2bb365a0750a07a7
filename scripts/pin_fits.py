"""Record full-precision fits of a few models, to pin a refactor: the pinned values must not
move (tests/test_pinned.py compares to 1e-10).

    python scripts/pin_fits.py tests/data/pinned_fits.json

Run it on the commit whose answers are to be kept; it fits bundled data only.
``--only NAME [NAME ...]`` re-records those cases and keeps the others as pinned (for a
change of answer that is understood and said in tests/test_pinned.py).
"""
from __future__ import annotations

import json
import sys

import numpy as np

import jaxglmm as jg

# name -> (dataset, formula, family, method, options, model keywords)
CASES = {
    "sleepstudy_reml": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", "gaussian", "reml", {}, {}),
    "penicillin_crossed_ml": ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "gaussian", "ml", {}, {}),
    "cbpp_laplace": ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial",
                     "laplace", {}, {"categorical": ["period"]}),
    "cbpp_agq9": ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial",
                  "agq", {"agq_points": 9}, {"categorical": ["period"]}),
    "grouseticks_poisson": ("grouseticks", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)",
                            "poisson", "laplace", {}, {"categorical": ["YEAR"]}),
    "wine_cumulative": ("wine", "rating ~ temp + contact + (1 | judge)", "cumulative", "laplace", {}, {}),
}


def record(fit) -> dict:
    out = fit.to_dict()
    out.pop("seconds")
    out["theta"] = np.asarray(fit.theta, float).tolist()
    out["vcov"] = np.asarray(fit.vcov(), float).tolist()
    out["ranef"] = {g: f.to_numpy(float).tolist() for g, f in fit.ranef.items()}
    out["predict"] = np.asarray(fit.predict(type="link"), float).tolist()
    return out


def main(path: str, only: list[str] | None = None) -> None:
    pinned = {}
    if only:
        with open(path) as f:
            pinned = json.load(f)
    for name, (dataset, formula, family, method, options, kw) in CASES.items():
        if only and name not in only:
            continue
        fit = jg.fit(formula, jg.load_dataset(dataset), family, method=method, **kw, **options)
        pinned[name] = {"dataset": dataset, "formula": formula, "family": family,
                        "method": method, "options": options, "model": kw, "fit": record(fit)}
        print(name, fit.loglik)
    with open(path, "w") as f:
        json.dump(pinned, f, indent=1)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[args.index("--only") + 1:] if "--only" in args else None)
