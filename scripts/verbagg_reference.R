# VerbAgg reference for tests/test_big_glmm.py: lme4's VerbAgg data and glmer's crossed binomial
# fit  r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)  at lme4's default control and
# run to convergence (bobyqa rhoend 1e-10, tolPwrss 1e-12; rhobeg 2e-3 as in make_tight_references.R ends lower here).
# Run: Rscript scripts/verbagg_reference.R
#   writes tests/data/verbagg.csv.gz (the data) and tests/data/verbagg_glmer.json
suppressMessages({library(lme4); library(jsonlite)})
data(VerbAgg, package = "lme4")
d <- VerbAgg[, c("r2", "Anger", "Gender", "btype", "situ", "id", "item")]
con <- gzfile("tests/data/verbagg.csv.gz", "w")
write.csv(data.frame(r2 = as.integer(d$r2 == "Y"), Anger = d$Anger, Gender = as.character(d$Gender),
                     btype = as.character(d$btype), situ = as.character(d$situ),
                     id = as.character(d$id), item = as.character(d$item)),
          con, row.names = FALSE)
close(con)
form <- r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)
rec <- function(m, control) {
  vc <- as.data.frame(VarCorr(m))
  list(software = paste("lme4", packageVersion("lme4")), control = control,
       levels = list(Gender = levels(d$Gender), btype = levels(d$btype), situ = levels(d$situ)),
       nobs = nobs(m), df = attr(logLik(m), "df"),
       fixef = as.list(fixef(m)), fixef_se = as.list(sqrt(diag(as.matrix(vcov(m))))),
       varcorr = lapply(seq_len(nrow(vc)), function(i) list(group = vc$grp[i],
          var1 = if (is.na(vc$var1[i])) NULL else vc$var1[i],
          var2 = if (is.na(vc$var2[i])) NULL else vc$var2[i], sd_or_cor = vc$sdcor[i])),
       theta = unname(getME(m, "theta")), logLik = as.numeric(logLik(m)))
}
m0 <- glmer(form, family = binomial, data = d)
ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5),
                     tolPwrss = 1e-12)
m1 <- glmer(form, family = binomial, data = d, control = ctrl)
out <- list(case = "verbagg", call = "glmer(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), binomial, VerbAgg)",
            default = rec(m0, "lme4 default glmerControl()"),
            tight = rec(m1, "bobyqa rhoend 1e-10, tolPwrss 1e-12"))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", pretty = TRUE),
           "tests/data/verbagg_glmer.json")
