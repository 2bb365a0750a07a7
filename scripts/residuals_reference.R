# lme4's vcov, fitted values and residuals of every type, for tests/test_inference_basics.py.
# The fits use tight optimizer tolerances (as scripts/make_tight_references.R): lme4's
# default stopping rule leaves cbpp about 1e-4 short of its optimum, which moves these
# quantities by up to 2% (the covariances) and hides the 1e-6 agreement of the formulas.
# Run: Rscript scripts/residuals_reference.R   (writes tests/data/residuals_reference.json)
suppressMessages(library(lme4))
dir <- "jaxglmm/datasets"
ss <- read.csv(file.path(dir, "sleepstudy.csv"), colClasses = c(Subject = "character"))
ss$Subject <- factor(ss$Subject)
cbpp <- read.csv(file.path(dir, "cbpp.csv"), colClasses = c(herd = "character", period = "character"))
cbpp$herd <- factor(cbpp$herd, levels = as.character(1:15))
lctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-12))
gctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10),
                      tolPwrss = 1e-12)
fits <- list(
  sleepstudy_reml = lmer(Reaction ~ Days + (Days | Subject), ss, REML = TRUE, control = lctrl),
  sleepstudy_ml = lmer(Reaction ~ Days + (Days | Subject), ss, REML = FALSE, control = lctrl),
  cbpp_laplace = glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
                       family = binomial, control = gctrl))
out <- list(software = paste("lme4", packageVersion("lme4")),
            control = "bobyqa rhobeg 2e-3, rhoend 1e-12 (lmer) / 1e-10 with tolPwrss 1e-12 (glmer)")
for (nm in names(fits)) {
  f <- fits[[nm]]
  v <- as.matrix(vcov(f))
  out[[nm]] <- list(
    theta = unname(getME(f, "theta")), fixef = as.list(fixef(f)), logLik = as.numeric(logLik(f)),
    vcov = unname(v), vcov_names = rownames(v), fitted = unname(fitted(f)),
    response = unname(residuals(f, type = "response")),
    pearson = unname(residuals(f, type = "pearson")),
    deviance = unname(residuals(f, type = "deviance")),
    scaled_quantiles = unname(quantile(residuals(f, type = "pearson", scaled = TRUE))),
    fixef_correlation = unname(cov2cor(v)))
}
jsonlite::write_json(out, "tests/data/residuals_reference.json", digits = NA, auto_unbox = TRUE,
                     pretty = TRUE)
