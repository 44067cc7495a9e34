"""Workflows built on the engine: cloning an environment, importing and adopting what a
host already has, snapshots of a whole environment, and writing stack programs."""
