import doctest

import pytest

from labelfree.analysis import collect, correlate, figures, labels, outliers, report


@pytest.mark.parametrize(
    "module", [collect, correlate, figures, labels, outliers, report], ids=lambda m: m.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
