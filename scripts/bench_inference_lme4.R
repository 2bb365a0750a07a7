# lme4's side of scripts/bench_inference.py: bootMer, a simulate + refit power loop and
# confint(method = "profile"), timed in one R session (start-up and the first fits
# excluded).  Prints one JSON line.
# Usage: Rscript bench_inference_lme4.R DATA_DIR NBOOT NPOWER
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; nboot <- as.integer(args[2]); npower <- as.integer(args[3])
ss <- read.csv(file.path(dir, "sleepstudy.csv"), colClasses = c(Subject = "character"))
ss$Subject <- factor(ss$Subject)
cbpp <- read.csv(file.path(dir, "cbpp.csv"), colClasses = c(herd = "character", period = "character"))
cbpp$herd <- factor(cbpp$herd, levels = as.character(1:15))
g <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)
t_boot <- system.time(b <- bootMer(g, fixef, nsim = nboot, seed = 1))[["elapsed"]]
full <- lmer(Reaction ~ Days + (Days | Subject), ss, REML = FALSE)
null <- lmer(Reaction ~ 1 + (Days | Subject), ss, REML = FALSE)
pars <- list(beta = c(fixef(full)[[1]], 2), theta = getME(full, "theta"), sigma = sigma(full))
set.seed(1)
t_power <- system.time({
  ys <- simulate(full, nsim = npower, newparams = pars)
  hits <- 0
  for (k in seq_len(npower)) {
    f1 <- refit(full, ys[[k]]); f0 <- refit(null, ys[[k]])
    hits <- hits + (pchisq(2 * (logLik(f1) - logLik(f0)), 1, lower.tail = FALSE) < 0.05)
  }
})[["elapsed"]]
fr <- lmer(Reaction ~ Days + (Days | Subject), ss)
t_prof_lmm <- system.time(suppressMessages(confint(fr, method = "profile")))[["elapsed"]]
t_prof_glmm <- system.time(suppressMessages(confint(g, method = "profile")))[["elapsed"]]
cat(jsonlite::toJSON(list(
  boot_seconds = t_boot, boot_sd = as.list(apply(b$t, 2, sd)), nboot = nboot,
  power_seconds = t_power, power = hits / npower, npower = npower,
  profile_lmm_seconds = t_prof_lmm, profile_glmm_seconds = t_prof_glmm),
  auto_unbox = TRUE, digits = NA), "\n")
