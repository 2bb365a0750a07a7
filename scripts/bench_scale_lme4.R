# lme4's side of scripts/bench_scale.py: exports InstEval (as lme4 ships it) to CSV and fits
# the issue's model by ML, timing the fit.  Usage: Rscript bench_scale_lme4.R OUT.csv
# Prints one line: "lme4 <case> <seconds> <logLik>".
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[[1]] else "insteval.csv"
data(InstEval)
write.csv(data.frame(y = InstEval$y, service = InstEval$service, s = InstEval$s,
                     d = InstEval$d, dept = InstEval$dept), out, row.names = FALSE)
t <- system.time(f <- lmer(y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept), InstEval,
                           REML = FALSE))
cat(sprintf("lme4 insteval %.3f %.10f\n", t[["elapsed"]], as.numeric(logLik(f))))
