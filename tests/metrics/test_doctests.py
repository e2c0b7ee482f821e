import doctest
import importlib

import pytest

MODULES = [
    "labelfree.metrics._checks",
    "labelfree.metrics.agreement",
    "labelfree.metrics.entropy",
    "labelfree.metrics.kmeans",
    "labelfree.metrics.lidar",
    "labelfree.metrics.probe",
    "labelfree.metrics.registry",
    "labelfree.metrics.silhouette",
    "labelfree.metrics.spectral",
    "labelfree.metrics.suite",
    "labelfree.eval",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    # import_module: `labelfree.metrics.entropy` the attribute is the function, not the module
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert name.endswith("_checks") or result.attempted > 0
