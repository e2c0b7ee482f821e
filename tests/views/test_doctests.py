import doctest
import importlib
import pkgutil

import labelfree.views


def test_docstring_examples():
    """Every example in the package's docstrings runs (they are spread over its modules)."""
    attempted = failed = 0
    for info in pkgutil.iter_modules(labelfree.views.__path__, "labelfree.views."):
        result = doctest.testmod(importlib.import_module(info.name), optionflags=doctest.ELLIPSIS)
        attempted, failed = attempted + result.attempted, failed + result.failed
    assert attempted >= 4
    assert failed == 0
