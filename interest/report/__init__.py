"""Reports of runs and benchmarks: plots (:mod:`interest.report.plots`)."""
