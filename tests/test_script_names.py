"""Scripts run by path (``python bench/diarization_metrics.py``) put their folder first on sys.path,
so a file there named like a standard-library module replaces it for every import: a
``bench/profile.py`` broke ``import cProfile`` inside torch for every bench script."""

import sys

import pytest
from conftest import REPO_DIR


@pytest.mark.parametrize("folder", ["bench", "scripts", "."])
def test_no_module_shadows_the_standard_library(folder: str) -> None:
    names = {path.stem for path in (REPO_DIR / folder).glob("*.py")}
    assert names, f"no modules found in {folder}"
    assert not names & sys.stdlib_module_names
