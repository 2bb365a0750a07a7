# lme4 peer for scripts/bench_many.py: fit once, then time refit() in a loop over simulated
# responses (one dataset per row of a headerless CSV).  R start-up, package loading, the
# initial fit and reading the CSV are outside the timed loop.
#
# Usage: Rscript bench_many_lme4.R {lmm|glmm} DATADIR YFILE ESTFILE NEST
# Prints one JSON line {"n", "seconds", "ms_per_fit", "warnings", "refit_vs_fresh"} and writes
# the estimates (fixef, theta, logLik) of the first NEST datasets to ESTFILE.
#
# LMM estimates come from fresh lmer() fits, not from refit(): lme4 1.1-31's refit.merMod
# rebuilds the response with mkRespMod(REML = isREML(object)), i.e. REML = TRUE = 1 fixed
# effect instead of ncol(X), so a REML refit optimizes a wrong criterion (sleepstudy: theta off
# by ~5e-3, REML criterion by ~8).  GLMM estimates are refit()'s, which start from the original
# fit and converge more tightly than a fresh glmer() (theta differs by up to ~6e-3, at a lower
# logLik).  "refit_vs_fresh" is max |theta_refit - theta_fresh| over those datasets.  The
# timing is of refit(), as users run it.
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
mode <- args[1]; dir <- args[2]; yfile <- args[3]; estfile <- args[4]
nest <- as.integer(args[5])

if (mode == "lmm") {
  d <- read.csv(file.path(dir, "sleepstudy.csv"), colClasses = c(Subject = "character"))
  fit <- lmer(Reaction ~ Days + (Days | Subject), d, REML = TRUE)
  resp <- function(y) y
  fresh <- function(y) { d$Reaction <- y; lmer(Reaction ~ Days + (Days | Subject), d, REML = TRUE) }
} else {
  d <- read.csv(file.path(dir, "cbpp.csv"),
                colClasses = c(herd = "character", period = "character"))
  fit <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), d, family = binomial)
  # refit.merMod needs a cbind response as a 2-column (successes, failures) matrix, as
  # simulate() gives: a vector of counts fails ("y values must be 0 <= y <= 1") and a vector
  # of proportions loses the trials (weights 1) and returns a nonsense fit with a warning.
  resp <- function(y) cbind(y, d$size - y)
  fresh <- function(y) {
    d$incidence <- y
    glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), d, family = binomial)
  }
}
Y <- unname(as.matrix(read.csv(yfile, header = FALSE)))
n <- nrow(Y); nest <- min(nest, n)
ests <- function(f) c(fixef(f), getME(f, "theta"), as.numeric(logLik(f)))
est <- refit_est <- matrix(NA_real_, nest, length(ests(fit)))
nwarn <- 0L
t <- system.time(for (i in seq_len(n)) {
  f <- withCallingHandlers(suppressMessages(refit(fit, resp(Y[i, ]))), warning = function(w) {
    nwarn <<- nwarn + 1L; invokeRestart("muffleWarning") })
  if (i <= nest) refit_est[i, ] <- ests(f)
})[["elapsed"]]
for (i in seq_len(nest)) est[i, ] <- ests(suppressWarnings(suppressMessages(fresh(Y[i, ]))))
th <- length(fixef(fit)) + seq_along(getME(fit, "theta"))
colnames(est) <- colnames(refit_est) <-
  c(paste0("fixef", seq_along(fixef(fit))), paste0("theta", seq_along(getME(fit, "theta"))), "loglik")
rvf <- max(abs(refit_est[, th] - est[, th]))
if (mode == "glmm") est <- refit_est
write.csv(est, estfile, row.names = FALSE)
cat(sprintf('{"n": %d, "seconds": %.6f, "ms_per_fit": %.6f, "warnings": %d, "refit_vs_fresh": %.3g}\n',
            n, t, 1e3 * t / n, nwarn, rvf))
