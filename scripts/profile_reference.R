# Reference profile intervals for tests/test_profile_edges.py: lme4's confint(profile(m))
# on edge cases (an SD whose interval reaches 0, a singular fit, a large intercept, a
# correlation reaching +1, an AGQ fit), each from a tight fit.  Writes tests/data/profile_reference.json and the data.
#   Rscript scripts/profile_reference.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
out_dir <- "tests/data"
tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))
gtight <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

data("Pastes", package = "lme4"); data("Dyestuff2", package = "lme4")
data("sleepstudy", package = "lme4"); data("cbpp", package = "lme4")
pastes <- data.frame(strength = Pastes$strength, batch = as.character(Pastes$batch),
                     sample = as.character(Pastes$sample))
dye2 <- data.frame(Yield = Dyestuff2$Yield, Batch = as.character(Dyestuff2$Batch))
sleep <- data.frame(Reaction = sleepstudy$Reaction, Days = sleepstudy$Days,
                    Subject = as.character(sleepstudy$Subject))
sleep$Big <- 3 * sleep$Reaction           # intercept about 754: exp() of it overflows
cb <- data.frame(herd = as.character(cbpp$herd), incidence = cbpp$incidence,
                 size = cbpp$size, period = as.character(cbpp$period))
write.csv(pastes, file.path(out_dir, "profile_pastes.csv"), row.names = FALSE)
write.csv(dye2, file.path(out_dir, "profile_dyestuff2.csv"), row.names = FALSE)
write.csv(sleep[, c("Big", "Days", "Subject")], file.path(out_dir, "profile_sleep_big.csv"),
          row.names = FALSE)

one <- function(m, formula, method, data, extra = list(), family = "gaussian") {
  # lme4's default step (delta.cutoff = 1/8) reads the ends off a coarse spline: on the
  # 6-subject sleepstudy it puts the intercept SD's lower end at 7.02 where the profile
  # crosses at 6.888; a finer step follows the profile closely
  pr <- profile(m, signames = FALSE, delta.cutoff = 1 / 32)
  ci <- confint(pr, level = 0.95)
  vc <- as.data.frame(VarCorr(m))
  list(formula = formula, family = family, method = method, data = data,
       rows = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]),
       fixef = as.list(fixef(m)), deviance = deviance(m),
       sdcor = vc$sdcor, singular = isSingular(m), extra = extra)
}
ref <- list()
# batch's SD: estimate > 0, its profile at 0 stays above -1.96: the lower end is 0
m <- lmer(strength ~ 1 + (1 | sample) + (1 | batch), pastes, REML = FALSE, control = tight)
ref$pastes_ml <- one(m, "strength ~ 1 + (1 | sample) + (1 | batch)", "ml", "profile_pastes.csv")
# a singular fit (the SD's estimate is 0)
m <- lmer(Yield ~ 1 + (1 | Batch), dye2, REML = FALSE, control = tight)
ref$dyestuff2_ml <- one(m, "Yield ~ 1 + (1 | Batch)", "ml", "profile_dyestuff2.csv")
# a large intercept
m <- lmer(Big ~ Days + (1 | Subject), sleep, REML = FALSE, control = tight)
ref$sleep_big_ml <- one(m, "Big ~ Days + (1 | Subject)", "ml", "profile_sleep_big.csv")
# a correlation whose profile stays inside the cut-off up to +1 (6 subjects)
s6 <- subset(sleep, Subject %in% unique(sleep$Subject)[1:6])[, c("Reaction", "Days", "Subject")]
write.csv(s6, file.path(out_dir, "profile_sleep6.csv"), row.names = FALSE)
m <- lmer(Reaction ~ Days + (Days | Subject), s6, REML = FALSE, control = tight)
ref$sleep6_cor_ml <- one(m, "Reaction ~ Days + (Days | Subject)", "ml", "profile_sleep6.csv")
# a singular Poisson GLMM (simulated with no group variation; the data are in tests/data)
pois <- read.csv(file.path(out_dir, "profile_pois_singular.csv"))
m <- glmer(y ~ x + (1 | g), pois, poisson, control = gtight)
ref$pois_singular <- one(m, "y ~ x + (1 | g)", "laplace", "profile_pois_singular.csv",
                         family = "poisson")
# an AGQ fit: profile of the nAGQ = 9 deviance
m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb, binomial,
           nAGQ = 9, control = gtight)
ref$cbpp_agq9 <- one(m, "incidence | trials(size) ~ period + (1 | herd)", "agq", "cbpp",
                     list(agq_points = 9), family = "binomial")
writeLines(toJSON(ref, auto_unbox = TRUE, digits = NA, pretty = TRUE),
           file.path(out_dir, "profile_reference.json"))
for (k in names(ref)) {cat(k, "\n"); print(cbind(ref[[k]]$rows, ref[[k]]$lower, ref[[k]]$upper))}

# lme4's own profile of sigma fails on the singular fit (zeta NA, interval 0 to Inf): the
# sigma row is computed here directly.  The ML deviance with sigma held fixed is minimized
# over the SD (1-D, from 0) and beta (GLS), and zeta's crossings found by uniroot.
direct_sigma <- function(y, g, m) {
  g <- factor(g); Z <- model.matrix(~ 0 + g); X <- matrix(1, length(y), 1)
  dev_at <- function(sd, sigma) {
    V <- sigma^2 * diag(length(y)) + sd^2 * tcrossprod(Z)
    R <- chol(V); Xr <- backsolve(R, X, transpose = TRUE); yr <- backsolve(R, y, transpose = TRUE)
    b <- qr.coef(qr(Xr), yr); r <- yr - Xr %*% b
    length(y) * log(2 * pi) + 2 * sum(log(diag(R))) + sum(r^2)
  }
  prof <- function(sigma) optimize(function(sd) dev_at(sd, sigma), c(0, 50), tol = 1e-12)$objective
  s_hat <- sigma(m); d_hat <- deviance(m)
  zeta <- function(s) sign(s - s_hat) * sqrt(max(prof(s) - d_hat, 0)) 
  c(uniroot(function(s) zeta(s) + qnorm(0.975), c(s_hat / 10, s_hat), tol = 1e-12)$root,
    uniroot(function(s) zeta(s) - qnorm(0.975), c(s_hat, s_hat * 10), tol = 1e-12)$root)
}
m <- lmer(Yield ~ 1 + (1 | Batch), dye2, REML = FALSE, control = tight)
ss <- direct_sigma(dye2$Yield, dye2$Batch, m)
i <- which(ref$dyestuff2_ml$rows == "sigma")
ref$dyestuff2_ml$lower[i] <- ss[1]; ref$dyestuff2_ml$upper[i] <- ss[2]
ref$dyestuff2_ml$extra <- list(sigma_row = "direct profile (lme4's profile of sigma fails here)")
writeLines(toJSON(ref, auto_unbox = TRUE, digits = NA, pretty = TRUE),
           file.path(out_dir, "profile_reference.json"))
print(ss)
