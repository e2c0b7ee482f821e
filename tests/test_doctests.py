"""The examples in the docstrings of the top-level modules run and hold."""

import doctest

import pytest

from labelfree import config, evaluation, loop, records, rundir


@pytest.mark.parametrize(
    "module", [config, evaluation, loop, records, rundir], ids=lambda m: m.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0 or module is rundir
