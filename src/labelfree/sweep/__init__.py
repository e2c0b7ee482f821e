"""Sweeps: planning the jobs and summarising how they ended.

:mod:`labelfree.sweep.plan` expands an experiment's sweep before it runs;
:mod:`labelfree.sweep.summary` is the Hydra callback that writes ``sweep_summary.{json,md}``.
"""
