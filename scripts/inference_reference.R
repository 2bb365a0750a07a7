# lme4 / lmerTest / pbkrtest values for jaxglmm's inference layer: vcov, fitted values and
# residuals, Wald and profile confidence intervals, likelihood-ratio anova, Satterthwaite and
# Kenward-Roger tests, parametric bootstrap (bootMer), leave-one-group-out influence and
# Cook's distances, and a small simulation-based power loop with its timing.
# Run from the repository root:
#   Rscript scripts/inference_reference.R tests/data/inference_reference.json
# Reads jaxglmm's bundled CSVs, so both fit the same rows.  Each section is wrapped in
# tryCatch: a failure records {"error": "..."} in place of that section.
args <- commandArgs(trailingOnly = TRUE)
outfile <- if (length(args) >= 1) args[1] else "tests/data/inference_reference.json"
source(file.path("scripts", "reference_data.R"))   # ss, cb, dir; lme4, jsonlite
cl <- read.csv(file.path(dir, "classroom.csv"))

f_ss <- Reaction ~ Days + (Days | Subject)
f_ss0 <- Reaction ~ 1 + (Days | Subject)
f_cb <- cbind(incidence, size - incidence) ~ period + (1 | herd)
f_cb0 <- cbind(incidence, size - incidence) ~ 1 + (1 | herd)
f_cl <- student_reading_score ~ student_age_s + student_female + student_re_black*teacher_re_black +
  student_re_black*class_prop_black + (1 + student_re_black | teacher_id)

# ---------------------------------------------------------------- helpers
safe <- function(expr) tryCatch(expr, error = function(e) list(error = conditionMessage(e)))
# a (named) matrix as row names, column names and row-major values (NA -> null)
nmat <- function(m) {
  m <- as.matrix(m)
  list(rownames = if (is.null(rownames(m))) NULL else rownames(m),
       colnames = if (is.null(colnames(m))) NULL else colnames(m),
       values = lapply(seq_len(nrow(m)), function(i) unname(m[i, ])))
}
# a named vector as a JSON object (NA -> null)
nvec <- function(x) { x <- as.list(x); lapply(x, function(v) if (is.na(v)) NULL else v) }
# lme4's variance-parameter rows (.sig01, ... in theta order, then .sigma) and brms-style names
param_map <- function(fit) {
  cnms <- getME(fit, "cnms")
  th <- names(getME(fit, "theta"))
  rows <- list(); k <- 0
  for (g in names(cnms)) {
    cn <- cnms[[g]]; p <- length(cn)
    for (j in seq_len(p)) for (i in j:p) {  # lower triangle, column-wise, as theta
      k <- k + 1
      brms <- if (i == j) paste0("sd_", g, "__", cn[i]) else paste0("cor_", g, "__", cn[j], "__", cn[i])
      rows[[k]] <- list(lme4 = sprintf(".sig%02d", k), brms = brms, theta_name = th[k],
                        kind = if (i == j) "sd" else "cor", group = g,
                        var1 = cn[j], var2 = if (i == j) NULL else cn[i])
    }
  }
  if (!isGLMM(fit) || family(fit)$family %in% c("gaussian", "Gamma", "inverse.gaussian"))
    rows[[k + 1]] <- list(lme4 = ".sigma", brms = "sigma", theta_name = NULL, kind = "sigma",
                          group = "Residual", var1 = NULL, var2 = NULL)
  rows
}
ci_rec <- function(ci, fit, method, secs) {
  pm <- param_map(fit)
  map <- setNames(vapply(pm, `[[`, "", "brms"), vapply(pm, `[[`, "", "lme4"))
  nm <- rownames(ci)
  list(method = method, level = 0.95, lme4_names = nm,
       brms_names = unname(ifelse(nm %in% names(map), map[nm], nm)),
       columns = colnames(ci),
       lower = lapply(ci[, 1], function(v) if (is.na(v)) NULL else v),
       upper = lapply(ci[, 2], function(v) if (is.na(v)) NULL else v),
       seconds = secs)
}
anova_rec <- function(expr) {
  msgs <- character(0)
  tab <- withCallingHandlers(expr, message = function(m) {
    msgs <<- c(msgs, trimws(conditionMessage(m))); invokeRestart("muffleMessage") })
  tab <- as.data.frame(tab)
  list(models = rownames(tab), columns = colnames(tab),
       table = lapply(tab, function(col) lapply(col, function(v) if (is.na(v)) NULL else v)),
       messages = I(msgs), refit_with_ML = any(grepl("refitting model\\(s\\) with ML", msgs)),
       heading = attr(tab, "heading"))
}
fit_block <- function(fit) {
  rec <- list(nobs = nobs(fit), fixef = nvec(fixef(fit)), theta = nvec(getME(fit, "theta")),
              sigma = sigma(fit), logLik = as.numeric(logLik(fit)), REML = isREML(fit),
              param_map = param_map(fit))
  rec$vcov <- safe(nmat(vcov(fit)))
  rec$fixef_cor <- safe(nmat(cov2cor(as.matrix(vcov(fit)))))
  rec$fitted <- safe(unname(fitted(fit)))
  rec$residuals <- list()
  for (ty in c("response", "pearson", "deviance", "working"))
    rec$residuals[[ty]] <- safe(unname(residuals(fit, type = ty)))
  rec$scaled_resid_quantiles <- safe({
    q <- quantile(residuals(fit, type = "pearson", scaled = TRUE))
    list(Min = q[[1]], `1Q` = q[[2]], Median = q[[3]], `3Q` = q[[4]], Max = q[[5]],
         source = 'quantile(residuals(fit, type = "pearson", scaled = TRUE)) as in summary.merMod')
  })
  rec$confint_wald <- safe({
    t <- system.time(ci <- confint(fit, method = "Wald", level = 0.95))[["elapsed"]]
    ci_rec(ci, fit, "Wald", t)
  })
  rec$confint_profile <- safe({
    t <- system.time(ci <- suppressWarnings(confint(fit, method = "profile", level = 0.95)))[["elapsed"]]
    ci_rec(ci, fit, "profile", t)
  })
  rec
}
tab_rec <- function(co) {
  co <- as.matrix(co)
  c(list(terms = rownames(co), columns = colnames(co)),
    setNames(lapply(seq_len(ncol(co)), function(j) unname(co[, j])), colnames(co)))
}

out <- list(
  description = paste("lme4/lmerTest/pbkrtest reference values for jaxglmm inference:",
                      "vcov, residuals, Wald/profile CIs, anova LRT, Satterthwaite/KR,",
                      "bootMer, influence / Cook's distance, simulation power"),
  script = "scripts/inference_reference.R",
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  lmerTest = as.character(packageVersion("lmerTest")),
                  pbkrtest = as.character(packageVersion("pbkrtest")),
                  Matrix = as.character(packageVersion("Matrix")),
                  jsonlite = as.character(packageVersion("jsonlite"))),
  models = list(
    ss_reml = "lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE)",
    ss_ml = "lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)",
    cbpp = "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)  # Laplace, default control",
    classroom = paste("lmer(student_reading_score ~ student_age_s + student_female +",
                      "student_re_black*teacher_re_black + student_re_black*class_prop_black +",
                      "(1 + student_re_black | teacher_id), classroom, REML = TRUE)")),
  notes = c("matrices are {rownames, colnames, values (row-major)}",
            "NA (e.g. lme4's Wald intervals for variance parameters) is written as null",
            "fitted/residuals for cbpp are on the proportion scale (lme4: response residual = incidence/size - fitted probability; weights = size)",
            "lme4 .sigNN rows follow the order of getME(fit, 'theta') (lower triangle of each term's covariance, column-wise); param_map gives the brms-style name of each")
)

ss_reml <- lmer(f_ss, data = ss, REML = TRUE)
ss_ml <- lmer(f_ss, data = ss, REML = FALSE)
cbpp <- glmer(f_cb, data = cb, family = binomial)

# ---------------------------------------------------------------- 1, 2: per-model blocks
for (nm in c("ss_reml", "ss_ml", "cbpp")) {
  cat("fit block:", nm, "\n")
  out[[nm]] <- safe(fit_block(get(nm)))
}

# ---------------------------------------------------------------- 3: anova (LRT)
cat("anova\n")
out$anova <- list()
out$anova$sleepstudy <- safe({
  ss_null <- lmer(f_ss0, data = ss, REML = TRUE)
  c(list(call = "anova(ss_null, ss_reml)  # ss_null = lmer(Reaction ~ 1 + (Days | Subject), sleepstudy) (REML)"),
    anova_rec(anova(ss_null, ss_reml)))
})
out$anova$cbpp <- safe({
  cbpp_null <- glmer(f_cb0, data = cb, family = binomial)
  c(list(call = "anova(cbpp_null, cbpp)  # cbpp_null = glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), cbpp, binomial)"),
    anova_rec(anova(cbpp_null, cbpp)))
})

# ---------------------------------------------------------------- 4: lmerTest
cat("lmerTest\n")
suppressMessages(library(lmerTest))
out$lmerTest <- list()
lt_fits <- list(ss_reml = function() lmerTest::lmer(f_ss, data = ss, REML = TRUE),
                ss_ml = function() lmerTest::lmer(f_ss, data = ss, REML = FALSE),
                classroom = function() lmerTest::lmer(f_cl, data = cl, REML = TRUE))
for (nm in names(lt_fits)) {
  cat("  ", nm, "\n")
  out$lmerTest[[nm]] <- safe({
    m <- lt_fits[[nm]]()
    rec <- list(REML = isREML(m), fixef = nvec(fixef(m)), logLik = as.numeric(logLik(m)))
    rec$satterthwaite <- safe({
      t <- system.time(co <- summary(m)$coefficients)[["elapsed"]]
      c(tab_rec(co), list(call = "summary(lmerTest::lmer(...))$coefficients  # ddf = 'Satterthwaite'", seconds = t))
    })
    rec$kenward_roger <- if (isREML(m)) safe({
      t <- system.time(co <- summary(m, ddf = "Kenward-Roger")$coefficients)[["elapsed"]]
      c(tab_rec(co), list(call = "summary(m, ddf = 'Kenward-Roger')$coefficients  # pbkrtest", seconds = t))
    }) else list(skipped = "Kenward-Roger requires a REML fit")
    if (nm == "classroom") {
      rec$vcov <- safe(nmat(vcov(m)))
      rec$theta <- nvec(getME(m, "theta")); rec$sigma <- sigma(m)
      rec$param_map <- param_map(m)
    }
    rec
  })
}
detach("package:lmerTest", unload = FALSE)

# ---------------------------------------------------------------- 5: bootMer
cat("bootMer\n")
boot_rec <- function(fit, nsim, seed, call) {
  t <- system.time(b <- suppressWarnings(suppressMessages(bootMer(fit, fixef, nsim = nsim, seed = seed))))[["elapsed"]]
  tt <- b$t
  ok <- stats::complete.cases(tt)
  list(call = call, nsim = nsim, seed = seed, n_ok = sum(ok), type = "parametric", use.u = FALSE,
       t0 = nvec(b$t0),
       mean = nvec(colMeans(tt[ok, , drop = FALSE])),
       sd = nvec(apply(tt[ok, , drop = FALSE], 2, sd)),
       quantile_2.5 = nvec(apply(tt[ok, , drop = FALSE], 2, quantile, 0.025)),
       quantile_97.5 = nvec(apply(tt[ok, , drop = FALSE], 2, quantile, 0.975)),
       seconds = t, seconds_per_replicate = t / nsim)
}
out$bootMer <- list()
out$bootMer$cbpp <- safe(boot_rec(cbpp, 1000, 1, "bootMer(cbpp, fixef, nsim = 1000, seed = 1)"))
out$bootMer$ss_reml <- safe(boot_rec(ss_reml, 200, 1, "bootMer(ss_reml, fixef, nsim = 200, seed = 1)"))

# ---------------------------------------------------------------- 6: influence, Cook's distance
cat("influence\n")
out$influence <- list()
out$influence$ss_reml_lme4 <- safe({
  t <- system.time(inf <- influence(ss_reml, groups = "Subject", data = ss))[["elapsed"]]
  fe1 <- inf[["fixed.effects[-Subject]"]]
  vc1 <- inf[["var.cov.comps[-Subject]"]]
  list(call = "lme4:::influence.merMod(ss_reml, groups = 'Subject', data = sleepstudy)  # maxfun = 1000, start = full-fit theta",
       deleted = as.character(inf$deleted),
       fixed_effects = nvec(inf$fixed.effects),
       fixed_effects_deleted = nmat(fe1),
       var_cov_comps = nvec(inf$var.cov.comps),
       var_cov_comps_deleted = nmat(vc1),
       converged = unname(inf$converged), function_evals = unname(inf[["function.evals"]]),
       dfbeta = safe(nmat(dfbeta(inf))),
       dfbetas = safe(nmat(dfbetas(inf))),
       cooks_distance_groups = safe(c(list(call = "cooks.distance(influence(ss_reml, groups = 'Subject'))  # lme4:::cooks.distance.influence.merMod"),
                                      list(values = nvec(cooks.distance(inf))))),
       seconds = t)
})
out$influence$ss_reml_refit_by_hand <- safe({
  levs <- levels(ss$Subject)
  t <- system.time(res <- lapply(levs, function(s) {
    d <- droplevels(ss[ss$Subject != s, ])
    m <- lmer(f_ss, data = d, REML = TRUE)
    list(fixef = fixef(m), theta = getME(m, "theta"), sigma = sigma(m),
         se = sqrt(diag(as.matrix(vcov(m)))), logLik = as.numeric(logLik(m)))
  }))[["elapsed"]]
  list(call = "for each Subject s: lmer(Reaction ~ Days + (Days | Subject), droplevels(subset(sleepstudy, Subject != s)), REML = TRUE)  # default control, fresh start",
       deleted = levs,
       fixef = nmat(do.call(rbind, lapply(res, `[[`, "fixef")) |> `rownames<-`(levs)),
       fixef_se = nmat(do.call(rbind, lapply(res, `[[`, "se")) |> `rownames<-`(levs)),
       theta = nmat(do.call(rbind, lapply(res, `[[`, "theta")) |> `rownames<-`(levs)),
       sigma = setNames(as.list(vapply(res, `[[`, 0, "sigma")), levs),
       logLik = setNames(as.list(vapply(res, `[[`, 0, "logLik")), levs),
       seconds = t)
})
cooks_rec <- function(fit, nm) {
  msgs <- character(0)
  v <- withCallingHandlers(cooks.distance(fit), warning = function(w) {
    msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") })
  h <- suppressWarnings(hatvalues(fit))
  list(call = sprintf("cooks.distance(%s)  # lme4:::cooks.distance.merMod: (pearson/(1-h))^2 * h / (sigma^2 * rank(X))", nm),
       values = lapply(unname(v), function(x) if (is.na(x)) NULL else x),
       hatvalues = unname(h), hatvalues_call = sprintf("hatvalues(%s)  # lme4:::hatvalues.merMod", nm),
       rank_X = as.integer(Matrix::rankMatrix(getME(fit, "X"))), sigma = sigma(fit),
       warnings = I(msgs))
}
out$cooks_distance <- list(
  available = c(cooks.distance.merMod = exists("cooks.distance.merMod", asNamespace("lme4")),
                influence.merMod = exists("influence.merMod", asNamespace("lme4"))) |> as.list(),
  ss_reml = safe(cooks_rec(ss_reml, "ss_reml")),
  cbpp = safe(cooks_rec(cbpp, "cbpp")))

# ---------------------------------------------------------------- 7: simulation power
cat("power\n")
power_rec <- function(beta_days, nsim = 200, seed = 1) {
  ss_null_ml <- lmer(f_ss0, data = ss, REML = FALSE)
  pars <- list(beta = c(`(Intercept)` = fixef(ss_ml)[[1]], Days = beta_days), theta = getME(ss_ml, "theta"),
               sigma = sigma(ss_ml))
  t <- system.time({
    sims <- simulate(ss_ml, nsim = nsim, seed = seed, newparams = pars)
    stat <- pv <- numeric(nsim)
    for (i in seq_len(nsim)) {
      y <- sims[[i]]
      f1 <- suppressMessages(suppressWarnings(refit(ss_ml, y)))
      f0 <- suppressMessages(suppressWarnings(refit(ss_null_ml, y)))
      stat[i] <- 2 * (as.numeric(logLik(f1)) - as.numeric(logLik(f0)))
      pv[i] <- pchisq(stat[i], df = 1, lower.tail = FALSE)
    }
  })[["elapsed"]]
  k <- sum(pv < 0.05)
  bt <- binom.test(k, nsim)
  list(description = "simulate(ss_ml, newparams) -> refit(full) and refit(null = Reaction ~ 1 + (Days | Subject), ML); LRT chisq df 1, alpha 0.05",
       params = list(beta = unname(pars$beta), theta = unname(pars$theta), sigma = pars$sigma),
       nsim = nsim, seed = seed, alpha = 0.05, n_subjects = nlevels(ss$Subject), n_obs = nrow(ss),
       successes = k, power = k / nsim,
       ci_95 = unname(bt$conf.int[1:2]), ci_method = "Clopper-Pearson exact (binom.test)",
       lrt_stat_mean = mean(stat), lrt_stat_min = min(stat),
       seconds = t, seconds_per_simulation = t / nsim)
}
out$power <- list()
out$power$fitted_effect <- safe(power_rec(fixef(ss_ml)[["Days"]]))
out$power$days_effect_2 <- safe(power_rec(2))

# ---------------------------------------------------------------- write
write(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, null = "null", na = "null"),
      outfile)

# ---------------------------------------------------------------- summary
cat("\nwrote", outfile, "\n")
errs <- function(x, path = "") {
  if (!is.list(x)) return(character(0))
  r <- if (!is.null(x$error) && is.character(x$error)) paste0(path, ": ", x$error) else character(0)
  for (n in names(x)) r <- c(r, errs(x[[n]], paste0(path, "/", n)))
  r
}
e <- errs(out)
cat("errors:", if (length(e)) paste0("\n  ", e, collapse = "") else "none", "\n")
if (is.list(out$bootMer$cbpp) && !is.null(out$bootMer$cbpp$seconds))
  cat("bootMer cbpp 1000:", out$bootMer$cbpp$seconds, "s\n")
if (is.list(out$bootMer$ss_reml) && !is.null(out$bootMer$ss_reml$seconds))
  cat("bootMer ss_reml 200:", out$bootMer$ss_reml$seconds, "s\n")
for (p in names(out$power)) if (!is.null(out$power[[p]]$power))
  cat("power", p, ":", out$power[[p]]$power, " s/sim:", out$power[[p]]$seconds_per_simulation, "\n")
