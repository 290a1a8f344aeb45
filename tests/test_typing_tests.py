"""The type tests in tests/typing/ are for mypy; this only checks they exist and import."""

from __future__ import annotations

from pathlib import Path


def test_type_tests_exist() -> None:
    assert list((Path(__file__).parent / "typing").glob("check_*.py"))
