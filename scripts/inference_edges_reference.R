# lme4 / lmerTest values for tests/test_inference_edges.py (issue 22): anova with
# refit = FALSE, non-nested and other-link comparisons (AIC, BIC, logLik), residuals.merMod's
# types and scaled = TRUE, Cook's distance of leave-one-subject-out refits
# (lme4:::cooks.distance.influence.merMod), and lmerTest's Satterthwaite df and timing on a
# crossed LMM of 7,500 rows (the data are simulated here and written to tests/data).
# Run from the repository root:
#   Rscript scripts/inference_edges_reference.R tests/data/inference_edges_reference.json
args <- commandArgs(trailingOnly = TRUE)
outfile <- if (length(args) >= 1) args[1] else "tests/data/inference_edges_reference.json"
source(file.path("scripts", "reference_data.R"))   # ss, cb, dir; lme4, jsonlite
suppressMessages(library(lmerTest))

lctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10, maxfun = 1e5))
gctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10, maxfun = 1e5),
                      tolPwrss = 1e-12)
tab <- function(a) {
  a <- as.data.frame(a)
  c(list(rows = rownames(a)), lapply(as.list(a), function(v) ifelse(is.na(v), NA, v)))
}
out <- list(description = "issue 22: anova refit=FALSE, non-nested, residual types, group Cook's, Satterthwaite at scale",
            script = "scripts/inference_edges_reference.R",
            versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                            lmerTest = as.character(packageVersion("lmerTest"))))

# ---- anova(refit = FALSE): REML fits compared as fitted
fm0 <- lme4::lmer(Reaction ~ Days + (1 | Subject), ss, REML = TRUE, control = lctrl)
fm1 <- lme4::lmer(Reaction ~ Days + (Days | Subject), ss, REML = TRUE, control = lctrl)
out$anova_refit_false <- c(list(call = "anova(m0 = fm0, m1 = fm1, refit = FALSE), both REML"),
                           tab(anova(fm0, fm1, refit = FALSE)))
# ---- non-nested (same number of parameters, neither within the other): lme4 tests anyway;
# jaxglmm reports AIC/BIC/logLik only
a <- lme4::lmer(Reaction ~ Days + (1 | Subject), ss, REML = FALSE, control = lctrl)
b <- lme4::lmer(Reaction ~ 1 + (Days | Subject), ss, REML = FALSE, control = lctrl)
out$anova_non_nested <- c(list(call = "anova(a, b): a = Reaction ~ Days + (1|Subject), b = Reaction ~ 1 + (Days|Subject), ML"),
                          tab(anova(a, b)))
logit <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb, binomial, control = gctrl)
probit <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb, binomial(link = "probit"),
                control = gctrl)
out$anova_links <- list(call = "cbpp logit and probit glmer, Laplace",
                        logLik = c(logit = as.numeric(logLik(logit)), probit = as.numeric(logLik(probit))),
                        AIC = c(logit = AIC(logit), probit = AIC(probit)),
                        BIC = c(logit = BIC(logit), probit = BIC(probit)))

# ---- residuals.merMod
res <- function(m, types) {
  r <- list()
  for (t in types) {
    r[[t]] <- unname(residuals(m, type = t))
    r[[paste0(t, "_scaled")]] <- unname(residuals(m, type = t, scaled = TRUE))
  }
  r$sigma <- sigma(m)
  r
}
out$residuals_ss <- c(list(call = "residuals(fm1, type=, scaled=), fm1 = Reaction ~ Days + (Days|Subject) REML"),
                      res(fm1, c("working", "response", "pearson", "deviance")))
out$residuals_cbpp <- c(list(call = "residuals(cbpp logit glmer, type=, scaled=)"),
                        res(logit, c("working", "response", "pearson", "deviance")))

# ---- Cook's distance of leave-one-subject-out refits, tight (lme4's influence.merMod refits
# with default tolerances), and lme4's own cooks.distance(influence(fm1, groups = "Subject"))
levs <- levels(ss$Subject)
fe1 <- do.call(rbind, lapply(levs, function(s) {
  fixef(lme4::lmer(Reaction ~ Days + (Days | Subject), droplevels(ss[ss$Subject != s, ]),
                   REML = TRUE, control = lctrl))
}))
db <- fe1 - matrix(fixef(fm1), nrow(fe1), ncol(fe1), byrow = TRUE)
n <- nrow(db); p <- ncol(db)
vinv <- (n - p) / (n * p) * solve(as.matrix(vcov(fm1)))
inf <- influence(fm1, groups = "Subject")
out$cooks_subject <- list(
  call = "leave-one-Subject-out refits of fm1 (tight); Cook's as lme4:::cooks.distance.influence.merMod",
  deleted = levs, fixed_effects_deleted = lapply(seq_len(n), function(i) unname(fe1[i, ])),
  cooks_distance = vapply(seq_len(n), function(i) drop(db[i, ] %*% vinv %*% db[i, ]), 0),
  lme4_cooks_distance = unname(cooks.distance(inf)))

# ---- Satterthwaite at scale: two crossed factors (300 and 250 levels), 7,500 rows
set.seed(22)
N <- 7500
g1 <- sample(300, N, replace = TRUE); g2 <- sample(250, N, replace = TRUE)
x <- round(rnorm(N), 4)
y <- round(1 + 0.3 * x + rnorm(300, sd = 0.7)[g1] + rnorm(250, sd = 0.5)[g2] + rnorm(N), 4)
cr <- data.frame(y = y, x = x, a = paste0("a", g1), b = paste0("b", g2))
gz <- gzfile("tests/data/crossed_7500.csv.gz", "w")
write.csv(cr, gz, row.names = FALSE)
close(gz)
cr <- read.csv("tests/data/crossed_7500.csv.gz")
t_fit <- system.time(m_lme4 <- lme4::lmer(y ~ x + (1 | a) + (1 | b), cr, REML = TRUE, control = lctrl))[["elapsed"]]
t_conv <- system.time(m_lt <- lmerTest::as_lmerModLmerTest(m_lme4))[["elapsed"]]
t_sum <- system.time(co <- coef(summary(m_lt, ddf = "Satterthwaite")))[["elapsed"]]
t_all <- system.time(m_lt2 <- lmerTest::lmer(y ~ x + (1 | a) + (1 | b), cr, REML = TRUE, control = lctrl))[["elapsed"]]
out$satterthwaite_crossed <- list(
  call = "lmerTest::as_lmerModLmerTest(lme4::lmer(y ~ x + (1|a) + (1|b), crossed_7500, REML = TRUE, <tight>)); summary(, ddf = 'Satterthwaite')",
  data = "tests/data/crossed_7500.csv.gz", theta = unname(getME(m_lme4, "theta")), sigma = sigma(m_lme4),
  fixef = as.list(fixef(m_lme4)), se = unname(co[, "Std. Error"]), df = unname(co[, "df"]),
  seconds = list(lme4_fit = t_fit, lmerTest_as_lmerModLmerTest = t_conv, lmerTest_summary = t_sum,
                 lmerTest_lmer_total = t_all))
# the same on the ML fit
m_ml <- lmerTest::lmer(y ~ x + (1 | a) + (1 | b), cr, REML = FALSE, control = lctrl)
out$satterthwaite_crossed_ml <- list(df = unname(coef(summary(m_ml))[, "df"]),
                                     se = unname(coef(summary(m_ml))[, "Std. Error"]))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null", na = "null"), outfile)
