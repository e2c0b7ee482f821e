import doctest

import pytest

from labelfree.sweep import plan, summary


@pytest.mark.parametrize("module", [plan, summary], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 or module is summary
    assert result.failed == 0
