"""Exporters: write files for other systems (CI pipelines, LAVA jobs) from
the configuration and a matrix. They sit on top of the pipeline (no stage
imports them); `lava` also reads a LAVA job's output back into results."""
