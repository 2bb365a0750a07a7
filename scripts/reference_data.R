# The bundled datasets as the reference scripts fit them (run from the repository root):
# jaxglmm's CSVs, so R and jaxglmm fit the same rows, with lme4's factor levels and order.
suppressMessages({library(lme4); library(jsonlite)})
dir <- "jaxglmm/datasets"
ss <- read.csv(file.path(dir, "sleepstudy.csv"), colClasses = c(Subject = "character"))
ss$Subject <- factor(ss$Subject)
cb <- read.csv(file.path(dir, "cbpp.csv"), colClasses = c(herd = "character", period = "character"))
cb$herd <- factor(cb$herd, levels = as.character(1:15))
cb$period <- factor(cb$period, levels = as.character(1:4))
