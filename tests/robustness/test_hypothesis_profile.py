"""The property tests are reproducible: derandomized, with no example database (tests/conftest.py)."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

from tests.robustness import test_fuzz

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE", "diffode") != "diffode",
                    reason="HYPOTHESIS_PROFILE chose another profile for this run")
def test_the_default_profile_is_derandomized_without_a_database():
    assert settings.default.derandomize is True
    assert settings.default.database is None
    # A test's own @settings(max_examples=...) keeps the profile's choices.
    own = test_fuzz.test_discrete_schedule_from_any_numbers._hypothesis_internal_use_settings
    assert own.derandomize is True and own.database is None and own.max_examples == 80


def test_the_example_database_stays_out_of_the_repository():
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".hypothesis/" in ignored
