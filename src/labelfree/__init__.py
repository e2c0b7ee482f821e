"""labelfree: label-free monitoring of self-supervised learning progress.

Train SSL encoders (lightly), score every checkpoint with label-free metrics and label-based
references, and correlate them (Xu, Lowe, Trappenberg 2024, arXiv:2409.06612).
"""

from labelfree.config import register_resolvers

__version__ = "0.1.0"

register_resolvers()  # ${labelfree.run_name:} etc. in conf/*.yaml, for any code that composes them
