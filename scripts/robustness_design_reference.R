# lme4's and R's values for tests/test_robustness_design.py (the tests never call R).
# Run from the repository root: Rscript scripts/robustness_design_reference.R
# Writes tests/data/robustness_design.json with
#   * identifiability: the messages lmer/glmer stop with (checkNlevels, checkZdims) and
#     the data they were produced on, plus cases lme4 accepts;
#   * levels: levels(factor(x)) for tricky character vectors (R sorts with ICU collation);
#   * zero_trials: glmer on cbpp with two rows set to 0 of 0, and without those rows.
suppressMessages({library(lme4); library(jsonlite)})
stopifnot(capabilities("ICU"))

# ----------------------------------------------------------------------------- identifiability
d <- data.frame(y = c(0.3, -1.2, 0.8, 1.9, -0.4, 0.1, 1.1, -0.7, 0.5, 2.2, -1.5, 0.9),
                x = c(1.0, 2.0, 3.5, 0.5, 2.5, 1.5, 3.0, 0.0, 2.2, 1.1, 0.7, 2.9),
                yb = c(0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0),
                gid = sprintf("o%02d", 1:12), gid2 = sprintf("p%02d", 12:1),
                g = rep(letters[1:6], each = 2), g4 = rep(letters[1:4], each = 3),
                g5 = c(rep(letters[1:5], each = 2), "a", "b"))
run <- function(formula, family) {
  msg <- tryCatch({
    if (family == "gaussian") lmer(as.formula(formula), d)
    else glmer(as.formula(formula), d, family = binomial)
    NULL
  }, error = function(e) conditionMessage(e))
  list(formula = formula, family = family, error = msg)
}
ident <- list(
  run("y ~ x + (1 | gid)", "gaussian"),
  run("y ~ x + (1 | gid2) + (1 | gid) + (1 | g)", "gaussian"),
  run("y ~ x + (1 + x | g)", "gaussian"),
  run("y ~ x + (1 + x + I(x^2) | g4)", "gaussian"),
  run("y ~ x + (x || g)", "gaussian"),
  run("yb ~ x + (1 | gid)", "binomial"),
  run("yb ~ x + (1 + x | g)", "binomial"),
  run("yb ~ x + (1 + x + I(x^2) | g5)", "binomial"))

# ----------------------------------------------------------------------------- levels
vectors <- list(
  case = c("cherry", "Banana", "apple"),
  case_ties = c("b", "B", "a", "A", "ab", "aB", "Ab", "AB"),
  digits = c("9", "10", "1", "2", "100", "x10", "x9", "x1"),
  punctuation = c("a_b", "a b", "ab", "a.b", "a-b", "aa", "a", "A_B", "_a", "a1", "a10", "a2"),
  spaces = c("new york", "newark", "New York", "new-york", "newyork"),
  accents = c("\u00e9", "e", "f", "E", "ez", "\u00e9a"),
  mixed = c("Control", "control", "treatment", "Treatment B", "treatment_a", "10mg", "5mg"))
lv <- lapply(vectors, function(x) list(values = x, levels = levels(factor(x))))

# ----------------------------------------------------------------------------- zero trials
cbpp <- read.csv("jaxglmm/datasets/cbpp.csv",
                 colClasses = c(herd = "character", period = "character"))
zero_rows <- c(3L, 20L)                       # 1-based
cz <- cbpp
cz$incidence[zero_rows] <- 0L
cz$size[zero_rows] <- 0L
ctrl <- glmerControl(optimizer = "bobyqa",
                     optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10, maxfun = 1e5),
                     tolPwrss = 1e-12)
f <- cbind(incidence, size - incidence) ~ period + (1 | herd)
rec <- function(m) list(fixef = as.list(fixef(m)), theta = unname(getME(m, "theta")),
                        logLik = as.numeric(logLik(m)), nobs = nobs(m))
with_zero <- rec(glmer(f, cz, family = binomial, control = ctrl))
without <- rec(glmer(f, cbpp[-zero_rows, ], family = binomial, control = ctrl))

out <- list(software = paste("R", getRversion(), "lme4", packageVersion("lme4"),
                             "ICU collator", icuGetCollate()),
            identifiability = list(data = d, cases = ident),
            levels = lv,
            zero_trials = list(formula = deparse(f), zero_rows_0based = zero_rows - 1L,
                               with_zero = with_zero, without = without))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", pretty = TRUE),
           "tests/data/robustness_design.json")
