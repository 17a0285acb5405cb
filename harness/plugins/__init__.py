"""Front-ends that meet users in their own tools (pytest, ...). Each one
composes the pipeline's public pieces; none of them is needed by the CLI."""
