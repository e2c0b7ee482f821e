"""Hydra configs of labelfree, a package so that tests and tools can compose them by name."""
