"""labelfree: label-free monitoring of self-supervised learning progress.

Train SSL encoders (lightly), score every checkpoint with label-free metrics and label-based
references, and correlate them (Xu, Lowe, Trappenberg 2024, arXiv:2409.06612).
"""

__version__ = "0.1.0"
