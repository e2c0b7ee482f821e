import doctest

import pytest

from labelfree import loggers
from labelfree.analysis import wandb_source


@pytest.mark.parametrize("module", [loggers, wandb_source], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
