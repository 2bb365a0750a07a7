# lme4 reference fits for the large correlated random-effect blocks (issue 22).
# Data: scripts/large_blocks_data.py.  Output: tests/data/large_blocks_reference.json
# (per case: logLik, fixef, theta, sigma; tight refits from lme4's default optimum with
# bobyqa, rhoend 1e-10; and the seconds of lme4's default fit, for the benchmark).
#   python scripts/large_blocks_data.py /tmp
#   Rscript scripts/large_blocks_reference.R [small|big|all] [folder of the big tables: /tmp]
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
which <- if (length(args)) args[1] else "all"
big_dir <- if (length(args) > 1) args[2] else "/tmp"
root <- normalizePath(file.path(dirname(sub("--file=", "", grep("--file=", commandArgs(), value = TRUE))), ".."))
out_path <- file.path(root, "tests", "data", "large_blocks_reference.json")
res <- if (file.exists(out_path)) fromJSON(out_path, simplifyVector = FALSE) else list()

slopes <- function(q) paste0("x", seq_len(q - 1), collapse = " + ")
tight_lmer <- lmerControl(optimizer = "bobyqa", calc.derivs = FALSE,
                          optCtrl = list(rhoend = 1e-10, maxfun = 1e6))
tight_glmer <- glmerControl(optimizer = "bobyqa", calc.derivs = FALSE,
                            optCtrl = list(rhoend = 1e-10, maxfun = 1e6))

record <- function(fit, seconds, formula, method, data_file) {
  list(formula = formula, method = method, data = data_file,
       loglik = as.numeric(logLik(fit)), fixef = as.list(fixef(fit)),
       theta = unname(getME(fit, "theta")), sigma = sigma(fit),
       lme4_seconds = seconds, converged_messages = fit@optinfo$conv$lme4$messages)
}

fit_case <- function(name, formula, data, data_file, method) {
  f <- as.formula(formula)
  if (method == "laplace") {
    t <- system.time(f0 <- glmer(f, data, family = poisson))[["elapsed"]]
    fit <- update(f0, start = list(theta = getME(f0, "theta"), fixef = fixef(f0)),
                  control = tight_glmer)
  } else {
    reml <- method == "reml"
    t <- system.time(f0 <- lmer(f, data, REML = reml))[["elapsed"]]
    fit <- update(f0, start = getME(f0, "theta"), control = tight_lmer)
  }
  cat(sprintf("%-16s lme4 %.2f s  logLik %.8f (default fit %.8f)\n", name, t,
              as.numeric(logLik(fit)), as.numeric(logLik(f0))))
  r <- record(fit, t, formula, method, data_file)
  yname <- all.vars(f)[1]
  r$checksum <- list(n = nrow(data), sum_y = sum(data[[yname]]), sum_x1 = sum(data$x1))
  res[[name]] <<- r
  save()       # after every case: the 3,000-group q = 10 fit alone takes lme4 many minutes
}

save <- function() {
  res$`_meta` <<- list(lme4 = as.character(packageVersion("lme4")), R = R.version.string,
                       script = "scripts/large_blocks_reference.R")
  write_json(res, out_path, auto_unbox = TRUE, digits = NA, pretty = TRUE)
}

if (which %in% c("small", "all")) {
  d <- read.csv(file.path(root, "tests/data/large_blocks_small.csv.gz"))
  for (q in c(5, 6, 8)) {
    fit_case(sprintf("small_q%d_reml", q), sprintf("y%d ~ %s + (%s | g)", q, slopes(q), slopes(q)),
             d, "large_blocks_small.csv.gz", "reml")
  }
  fit_case("small_q5_ml", sprintf("y5 ~ %s + (%s | g)", slopes(5), slopes(5)), d,
           "large_blocks_small.csv.gz", "ml")
  fit_case("small_cross_reml", sprintf("ycross ~ %s + (%s | g) + (x1 | h)", slopes(5), slopes(5)),
           d, "large_blocks_small.csv.gz", "reml")
  fit_case("small_pois5_laplace", sprintf("ypois5 ~ %s + (%s | g)", slopes(5), slopes(5)), d,
           "large_blocks_small.csv.gz", "laplace")
}
if (which %in% c("big", "all")) {
  for (q in c(5, 6, 8, 10)) {
    file <- sprintf("large_blocks_big_q%d.csv.gz", q)
    d <- read.csv(file.path(big_dir, file))
    fit_case(sprintf("big_q%d_reml", q), sprintf("y%d ~ %s + (%s | g)", q, slopes(q), slopes(q)),
             d, file, "reml")
    if (q == 5) fit_case("big_q5_ml", sprintf("y5 ~ %s + (%s | g)", slopes(5), slopes(5)), d,
                         file, "ml")
  }
}
