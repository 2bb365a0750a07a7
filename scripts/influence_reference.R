# lme4 values for jaxglmm's influence diagnostics (jaxglmm/inference/influence.py), each on a
# freshly fitted model: hatvalues, Cook's distances (observation level, cooks.distance.merMod)
# and Pearson residuals of sleepstudy (REML) and cbpp (Laplace, tight tolerances), and
# leave-one-herd-out refits of cbpp (each with the same tight control).  (tests/data/inference_reference.json's cbpp hatvalues were computed
# after confint(method = "profile") had run on the same fit object, which updates its
# merPredD in place: L and RX no longer belong to the optimum, and those hat values differ.)
# Run from the repository root:
#   Rscript scripts/influence_reference.R tests/data/influence_reference.json
args <- commandArgs(trailingOnly = TRUE)
outfile <- if (length(args) >= 1) args[1] else "tests/data/influence_reference.json"
source(file.path("scripts", "reference_data.R"))   # ss, cb, dir; lme4, jsonlite

obs_rec <- function(fit, call) {
  list(call = call, fixef = as.list(fixef(fit)), sigma = sigma(fit),
       hatvalues = unname(suppressWarnings(hatvalues(fit))),
       cooks_distance = unname(suppressWarnings(cooks.distance(fit))),
       pearson = unname(residuals(fit, type = "pearson")),
       rank_X = as.integer(Matrix::rankMatrix(getME(fit, "X"))))
}
ss_reml <- lmer(Reaction ~ Days + (Days | Subject), data = ss, REML = TRUE)
# tight tolerances, as scripts/make_tight_references.R: lme4's defaults stop about 4e-4
# (relative) short of the optimum in the fixed effects, which moves hat values as much
ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10, maxfun = 1e5),
                     tolPwrss = 1e-12)
cbpp <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cb, family = binomial,
              control = ctrl)
out <- list(
  description = "lme4 hatvalues / cooks.distance on fresh fits; leave-one-herd-out influence of cbpp",
  script = "scripts/influence_reference.R",
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4"))),
  ss_reml = obs_rec(ss_reml, "lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE)"),
  cbpp = obs_rec(cbpp, "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial, control = glmerControl(optimizer = 'bobyqa', optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10, maxfun = 1e5), tolPwrss = 1e-12))"))
# leave-one-herd-out refits by hand, with the same tight control (lme4's influence.merMod
# refits with its own maxfun = 1000 and default tolerances, 5e-4 short), and Cook's distance
# as lme4:::cooks.distance.influence.merMod computes it from them
levs <- levels(cb$herd)
fe1 <- do.call(rbind, lapply(levs, function(h) {
  m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd),
             data = droplevels(cb[cb$herd != h, ]), family = binomial, control = ctrl)
  fixef(m)
}))
db <- fe1 - matrix(fixef(cbpp), nrow(fe1), ncol(fe1), byrow = TRUE)
n <- nrow(db); p <- ncol(db)
vinv <- (n - p) / (n * p) * solve(as.matrix(vcov(cbpp)))
out$cbpp_influence_herd <- list(
  call = "for each herd h: glmer(<cbpp model>, droplevels(subset(cbpp, herd != h)), control = <tight>); Cook's as lme4:::cooks.distance.influence.merMod",
  deleted = levs, colnames = colnames(fe1),
  fixed_effects_deleted = lapply(seq_len(nrow(fe1)), function(i) unname(fe1[i, ])),
  cooks_distance = vapply(seq_len(n), function(i) drop(db[i, ] %*% vinv %*% db[i, ]), 0))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), outfile)
cat("wrote", outfile, "\n")
