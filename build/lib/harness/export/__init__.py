"""Exporters: write files for other systems (CI pipelines, LAVA) from the
configuration and a matrix. They run nothing and read no results."""
