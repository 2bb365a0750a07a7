# Reference fits for tests/test_nested.py: nested designs, (1 | a) + (1 | a:b) and a random
# slope on the outer factor, large enough that jaxglmm takes its nested factor
# (jaxglmm.core.nested): gaussian REML and ML by lme4 with a tight bobyqa (a converged
# reference: lme4's default stops up to 5e-4 short), binomial Laplace by glmmTMB (TMB's exact
# Laplace).  lme4's glmer on the binomial design ends 1.7e-4 lower in log-likelihood, at
# -989.8605707, and its own deviance function rates glmmTMB's optimum (and jaxglmm's, the
# same to 1e-12) lower still: its Laplace value differs from TMB's there, so glmmTMB is the
# reference.
#   Rscript scripts/nested_reference.R
# Writes tests/data/nested_small.csv and tests/data/nested_reference.json.
suppressPackageStartupMessages({library(lme4); library(glmmTMB); library(jsonlite)})
out_dir <- "tests/data"
tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-4, rhoend = 1e-11, maxfun = 1e5))
set.seed(20261208)
G <- 150
a <- rep(seq_len(G), each = 10)
n <- length(a)
b <- sample(0:2, n, TRUE)
x <- round(rnorm(n), 4)
eta <- 0.5 + 0.3 * x + rnorm(G, 0, 0.5)[a] + rnorm(G, 0, 0.3)[a] * x + rnorm(3 * G, 0, 0.4)[(a - 1) * 3 + b + 1]
d <- data.frame(y = round(100 + 10 * eta + rnorm(n, 0, 10), 4), yb = rbinom(n, 1, plogis(eta)),
                x = x, a = sprintf("a%03d", a), b = sprintf("b%d", b))
write.csv(d, file.path(out_dir, "nested_small.csv"), row.names = FALSE)
fits <- list(
  gaussian_reml = lmer(y ~ x + (1 | a) + (1 | a:b), d, REML = TRUE, control = tight),
  gaussian_ml = lmer(y ~ x + (1 | a) + (1 | a:b), d, REML = FALSE, control = tight),
  slopes_reml = lmer(y ~ x + (1 + x | a) + (1 | a:b), d, REML = TRUE, control = tight),
  binomial = glmmTMB(yb ~ x + (1 | a) + (1 | a:b), d, family = binomial,
                     control = glmmTMBControl(optCtrl = list(rel.tol = 1e-14, x.tol = 1e-12,
                                                             eval.max = 1e4, iter.max = 1e4))))
formulas <- c(gaussian_reml = "y ~ x + (1 | a) + (1 | a:b)", gaussian_ml = "y ~ x + (1 | a) + (1 | a:b)",
              slopes_reml = "y ~ x + (1 + x | a) + (1 | a:b)", binomial = "yb ~ x + (1 | a) + (1 | a:b)")
methods <- c(gaussian_reml = "reml", gaussian_ml = "ml", slopes_reml = "reml", binomial = "laplace")
ref <- lapply(names(fits), function(k) {
  m <- fits[[k]]
  tmb <- inherits(m, "glmmTMB")
  re <- if (tmb) ranef(m, condVar = TRUE)$cond else ranef(m, condVar = TRUE)
  first <- function(g) {
    r <- re[[g]]
    v <- attr(r, if (tmb) "condVar" else "postVar")
    if (is.null(dim(v)) || length(dim(v)) == 1) v <- array(v, c(1, 1, length(v)))
    list(levels = rownames(r)[1:5], values = unname(as.matrix(r)[1:5, , drop = FALSE]),
         sd = t(sapply(1:5, function(i) sqrt(diag(as.matrix(v[, , i]))))))
  }
  sdcor <- if (tmb) sqrt(c(VarCorr(m)$cond[["a:b"]][1], VarCorr(m)$cond[["a"]][1])) else
    as.data.frame(VarCorr(m))$sdcor
  fe <- if (tmb) fixef(m)$cond else fixef(m)
  V <- if (tmb) vcov(m)$cond else vcov(m)
  list(formula = formulas[[k]], family = if (k == "binomial") "binomial" else "gaussian",
       method = methods[[k]], loglik = as.numeric(logLik(m)), fixef = unname(fe),
       se = unname(sqrt(diag(as.matrix(V)))), sd_or_cor = sdcor,
       ranef_ab = first("a:b"), ranef_a = first("a"))
})
names(ref) <- names(fits)
write(toJSON(ref, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out_dir, "nested_reference.json"))
cat("wrote", file.path(out_dir, "nested_reference.json"), "\n")
