# lme4's values for the result-side robustness tests (tests/test_robustness_results.py).
# Run from the repository root:  Rscript scripts/robustness_results_reference.R
# Writes tests/data/robustness_results.json.  Reads jaxglmm's bundled CSVs, so both fit the
# same rows.
suppressMessages({library(lme4); library(jsonlite)})
dir <- "jaxglmm/datasets"
ss <- read.csv(file.path(dir, "sleepstudy.csv"), colClasses = c(Subject = "character"))
cb <- read.csv(file.path(dir, "cbpp.csv"), colClasses = c(herd = "character", period = "character"))
gt <- read.csv(file.path(dir, "grouseticks.csv"),
               colClasses = c(BROOD = "character", LOCATION = "character", YEAR = "character"))
out <- list()

# binomial with the log link (glm's mustart start)
m_log <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb,
               family = binomial(link = "log"))
out$cbpp_log <- list(fixef = unname(fixef(m_log)), loglik = as.numeric(logLik(m_log)))

# predict with re.form naming one of two random terms
m_gt <- glmer(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION), gt, family = poisson)
out$grouse_reform <- list(
  location_only = unname(predict(m_gt, re.form = ~(1 | LOCATION))),
  brood_only = unname(predict(m_gt, re.form = ~(1 | BROOD))),
  all = unname(predict(m_gt)), none = unname(predict(m_gt, re.form = NA)))

# summary blocks: scaled residuals and the correlation of fixed effects
m_ss <- lmer(Reaction ~ Days + (Days | Subject), ss)
m_cb <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb, family = binomial)
q <- function(m) unname(quantile(residuals(m, type = "pearson", scaled = TRUE)))
out$sleep_summary <- list(resid_quantiles = q(m_ss),
                          fixef_cor = unname(as.matrix(cov2cor(vcov(m_ss)))))
out$cbpp_summary <- list(resid_quantiles = q(m_cb),
                         fixef_cor = unname(as.matrix(cov2cor(vcov(m_cb)))))

# simulate on the proportion idiom gives proportions
cb$prop <- cb$incidence / cb$size
m_prop <- glmer(prop ~ period + (1 | herd), cb, weights = size, family = binomial)
sim <- simulate(m_prop, nsim = 1, seed = 1)[[1]]
out$prop_simulate <- list(all_in_unit = all(sim >= 0 & sim <= 1),
                          whole_counts = all(abs(sim * cb$size - round(sim * cb$size)) < 1e-9))

# lme4's scale check (checkScaleX): a predictor on a very different scale warns
ss$big <- ss$Days * 1e4
msg <- tryCatch({lmer(Reaction ~ big + (1 | Subject), ss); "none"},
                warning = function(w) conditionMessage(w))
out$scale_warning <- msg
write(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE),
      "tests/data/robustness_results.json")
