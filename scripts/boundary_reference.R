# Reference shares for tests/test_boundary_batch.py: lme4's bootMer from singular fits,
# the share of replicates whose random-effect SD comes out non-zero (theta > 1e-4, lme4's
# isSingular tolerance).  A fit that starts at a zero variance must be able to leave it:
# bootMer refits from the fitted theta (0) with bobyqa, which moves off the bound.
#   Rscript scripts/boundary_reference.R
# Writes tests/data/boundary_reference.json and the data (boundary_dyestuff2.csv,
# boundary_bernoulli.csv).
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
out_dir <- "tests/data"
tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))
gtight <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))
nsim <- 2000
tol <- 1e-4

data("Dyestuff2", package = "lme4")
dye2 <- data.frame(Yield = Dyestuff2$Yield, Batch = as.character(Dyestuff2$Batch))
write.csv(dye2, file.path(out_dir, "boundary_dyestuff2.csv"), row.names = FALSE)
m1 <- lmer(Yield ~ 1 + (1 | Batch), dye2, REML = TRUE, control = tight)
stopifnot(isSingular(m1))
set.seed(101)
b1 <- bootMer(m1, function(m) c(getME(m, "theta"), sigma(m)), nsim = nsim)
share1 <- mean(b1$t[, 1] > tol)
sd1 <- b1$t[, 1] * b1$t[, 2]            # the Batch SD, as confint(m, method = "boot")

# a bernoulli GLMM with no group variation, whose fit by glmer is singular
set.seed(7)
repeat {
  G <- 20; m <- 10
  d <- data.frame(g = rep(sprintf("g%02d", 1:G), each = m), x = round(rnorm(G * m), 4))
  d$y <- rbinom(G * m, 1, plogis(-0.2 + 0.6 * d$x))
  m2 <- glmer(y ~ x + (1 | g), d, family = binomial, control = gtight)
  if (isSingular(m2)) break
}
write.csv(d, file.path(out_dir, "boundary_bernoulli.csv"), row.names = FALSE)
set.seed(202)
b2 <- bootMer(m2, function(m) getME(m, "theta"), nsim = nsim)
share2 <- mean(b2$t[, 1] > tol)

ref <- list(
  dyestuff2 = list(formula = "Yield ~ 1 + (1 | Batch)", family = "gaussian", method = "reml",
                   data = "boundary_dyestuff2.csv", theta = unname(getME(m1, "theta")),
                   loglik = as.numeric(logLik(m1)), nsim = nsim, tol = tol,
                   nonzero_share = share1,
                   sd_quantiles = list(p = c(0.5, 0.75, 0.975),
                                       q = unname(quantile(sd1, c(0.5, 0.75, 0.975))))),
  bernoulli = list(formula = "y ~ x + (1 | g)", family = "binomial", method = "laplace",
                   data = "boundary_bernoulli.csv", theta = unname(getME(m2, "theta")),
                   fixef = unname(fixef(m2)), loglik = as.numeric(logLik(m2)), nsim = nsim,
                   tol = tol, nonzero_share = share2),
  lme4 = as.character(packageVersion("lme4")))
write_json(ref, file.path(out_dir, "boundary_reference.json"), digits = NA, auto_unbox = TRUE,
           pretty = TRUE)
print(str(ref))
