"""Drivers over the pipeline for a patch series: `check` walks every patch
(applies, builds, adds no warning, keeps the requested options, boots),
`bisect` finds the first patch that breaks a scenario. They compose
`build_kernel(upto=k)` and `pipeline.run`; they do not fork them."""
