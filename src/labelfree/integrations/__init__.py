"""Training frameworks' hooks around :class:`labelfree.monitor.LabelFreeMonitor`.

* :mod:`labelfree.integrations.lightning`: ``LabelFreeCallback``, a PyTorch Lightning callback
  (``pip install 'labelfree[lightning]'``).

Each integration is a module of its own, imported explicitly, so that importing this package
needs none of the frameworks.
"""
