"""Analysis stage: collect run directories, correlate metrics with targets, tables and figures.

``collect`` loads and validates run directories into a tidy table; ``correlate`` holds pure
functions on that table; ``figures`` and ``report`` write PNG/PDF figures and Markdown/LaTeX
tables. ``labelfree-analyze`` (:mod:`labelfree.analyze`) chains them.
"""
