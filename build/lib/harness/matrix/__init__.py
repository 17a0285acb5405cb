"""The matrix driver: targets x profiles x scenarios from a YAML file, run
by a pool of workers (`-j N`) or split into CI shards (`--shard I/N`). It
composes `pipeline` units; it does not fork the pipeline."""
