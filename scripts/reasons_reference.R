# References for tests/test_reasons.py (issue 22: reasons instead of numbers).
#   * a long table of six small gaussian datasets: three that lme4 fits, and three it
#     cannot use as they are (one level of the grouping factor; as many levels as rows; a
#     predictor that is zero throughout, so a rank-deficient X): lme4's fits of the first
#     three, run tight, and lme4's own error or message for the other three;
#   * (1 + Days || Subject) on sleepstudy: the names lme4 gives its groups, theta and ngrps;
#   * ordinal::clmm on wine with a declared rating level that never occurs: clmm drops it.
# Run from the repository root: Rscript scripts/reasons_reference.R
# (writes tests/data/reasons_many.csv and tests/data/reasons_reference.json)
suppressMessages({library(lme4); library(ordinal); library(jsonlite)})
out_dir <- "tests/data"
ctrl <- lmerControl(optimizer = "bobyqa",
                    optCtrl = list(rhobeg = 2e-2, rhoend = 1e-12, maxfun = 1e5))

set.seed(22)
sim <- function(id, ng = 8, per = 5) {
  g <- rep(sprintf("g%d", seq_len(ng)), each = per)
  x <- round(rnorm(ng * per), 4)
  y <- round(1 + 0.5 * x + rnorm(ng, sd = 1.2)[as.integer(factor(g))] + rnorm(ng * per), 4)
  data.frame(sim = id, y = y, x = x, g = g, stringsAsFactors = FALSE)
}
good <- lapply(c("a", "b", "c"), sim)
one <- sim("one"); one$g <- "g1"                                  # a single level
rows <- sim("rows"); rows$g <- sprintf("r%02d", seq_len(nrow(rows)))   # a level per row
rank <- sim("rank"); rank$x <- 0                                  # X = [1, 0]: rank 1
long <- do.call(rbind, c(good, list(one, rows, rank)))
write.csv(long, file.path(out_dir, "reasons_many.csv"), row.names = FALSE)

fits <- list()
for (d in good) {
  m <- lmer(y ~ x + (1 | g), data = d, REML = TRUE, control = ctrl)
  fits[[d$sim[1]]] <- list(fixef = as.list(fixef(m)), logLik = as.numeric(logLik(m)),
                           sd_g = attr(VarCorr(m)$g, "stddev")[[1]], sigma = sigma(m))
}
why <- function(d) {
  msg <- NULL
  r <- withCallingHandlers(
    tryCatch({lmer(y ~ x + (1 | g), data = d, control = ctrl); NULL},
             error = function(e) conditionMessage(e)),
    message = function(m) {msg <<- conditionMessage(m); invokeRestart("muffleMessage")})
  if (is.null(r)) trimws(msg) else r
}
refused <- list(one = why(one), rows = why(rows), rank = why(rank))

sleep <- read.csv("jaxglmm/datasets/sleepstudy.csv", colClasses = c(Subject = "character"))
u <- lmer(Reaction ~ Days + (Days || Subject), data = sleep, control = ctrl)
vc <- as.data.frame(VarCorr(u))
uncorrelated <- list(grp = vc$grp, var1 = vc$var1, sdcor = vc$sdcor,
                     theta_names = names(getME(u, "theta")), ngrps = as.list(ngrps(u)))

wine <- read.csv("jaxglmm/datasets/wine.csv", colClasses = c(judge = "character"))
wine$rating <- factor(wine$rating, levels = 1:6, ordered = TRUE)   # level 6 never occurs
w <- clmm(rating ~ temp + contact + (1 | judge), data = wine)   # default control: a
# tighter gradTol only makes clmm's inner steps warn, not the estimates move
ordinal_ref <- list(declared = levels(wine$rating), observed = sort(unique(as.character(wine$rating))),
                    thresholds = unname(w$alpha), threshold_names = names(w$alpha),
                    beta = as.list(w$beta), sd_judge = sqrt(w$ST$judge[1, 1]^2))

rec <- list(software = paste("lme4", packageVersion("lme4"), "ordinal", packageVersion("ordinal")),
            control = "bobyqa rhobeg 2e-2 rhoend 1e-12 (lmer); clmm default",
            many = list(fits = fits, refused = refused), uncorrelated = uncorrelated,
            wine_declared_level = ordinal_ref)
writeLines(toJSON(rec, auto_unbox = TRUE, digits = NA, null = "null", pretty = TRUE),
           file.path(out_dir, "reasons_reference.json"))
