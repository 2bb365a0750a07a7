# R peers for scripts/bench_bigglmm.py, timed in the same run.
# Usage: Rscript bench_bigglmm.R big CSV        -> glmer on the simulated 1e6-row bernoulli
#        Rscript bench_bigglmm.R verbagg REPS   -> glmer and glmmTMB on lme4's VerbAgg
#        Rscript bench_bigglmm.R crossed CSV    -> glmer and glmmTMB on the crossed bernoulli
# Prints one JSON line per fit: {"peer", "case", "seconds", "seconds_first", "logLik", "fixef",
# "theta"}.  Package loading and reading the data are outside the timings; "seconds" is the
# fastest of the repeats (the first fit included), "seconds_first" the first fit's.
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
emit <- function(peer, case, times, ll, fixef, theta) {
  cat(toJSON(list(peer = peer, case = case, seconds = min(times), seconds_first = times[1],
                  logLik = ll, fixef = as.list(fixef), theta = theta),
             auto_unbox = TRUE, digits = NA), "\n")
}
timed <- function(expr_fn, reps) {
  times <- numeric(reps); fit <- NULL
  for (i in seq_len(reps)) {
    t0 <- proc.time()[["elapsed"]]; fit <- expr_fn(); times[i] <- proc.time()[["elapsed"]] - t0
  }
  list(fit = fit, times = times)
}
if (args[1] == "big") {
  d <- read.csv(args[2], colClasses = c(g = "character"))
  r <- timed(function() glmer(y ~ x + (1 | g), family = binomial, data = d), 1)
  emit("glmer", "big", r$times, as.numeric(logLik(r$fit)), fixef(r$fit), unname(getME(r$fit, "theta")))
} else if (args[1] == "crossed") {
  d <- read.csv(args[2], colClasses = c(a = "character", b = "character"))
  form <- y ~ x + (1 | a) + (1 | b)
  r <- timed(function() glmer(form, family = binomial, data = d), 1)
  emit("glmer", "crossed", r$times, as.numeric(logLik(r$fit)), fixef(r$fit),
       unname(getME(r$fit, "theta")))
  if (requireNamespace("glmmTMB", quietly = TRUE)) {
    suppressMessages(library(glmmTMB))
    r <- timed(function() glmmTMB(form, family = binomial, data = d), 1)
    emit("glmmTMB", "crossed", r$times, as.numeric(logLik(r$fit)), fixef(r$fit)$cond,
         sqrt(unlist(lapply(VarCorr(r$fit)$cond, function(v) v[1, 1]))))
  }
} else {
  reps <- as.integer(args[2])
  data(VerbAgg, package = "lme4")
  form <- r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)
  r <- timed(function() glmer(form, family = binomial, data = VerbAgg), reps)
  emit("glmer", "verbagg", r$times, as.numeric(logLik(r$fit)), fixef(r$fit),
       unname(getME(r$fit, "theta")))
  if (requireNamespace("glmmTMB", quietly = TRUE)) {
    suppressMessages(library(glmmTMB))
    r <- timed(function() glmmTMB(form, family = binomial, data = VerbAgg), reps)
    emit("glmmTMB", "verbagg", r$times, as.numeric(logLik(r$fit)), fixef(r$fit)$cond,
         sqrt(unlist(lapply(VarCorr(r$fit)$cond, function(v) v[1, 1]))))
  }
}
