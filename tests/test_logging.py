"""Logging helpers."""

from asgiserve.logging import escape


def test_escape_leaves_printable_text_alone() -> None:
    assert escape("/café?x=1") == "/café?x=1"


def test_escape_neutralises_control_characters() -> None:
    assert escape("a\nb\rc\x1b[31m\x7f") == "a\\x0ab\\x0dc\\x1b[31m\\x7f"
    assert "\n" not in escape("line\nbreak\u2028")
