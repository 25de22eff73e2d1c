"""What a new user reads: the README's install lines and tables, and the suite's skip reasons."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_installs_from_a_clone_only() -> None:
    # The package is not published: `pip install asgiserve` would fetch something else, or fail.
    for arguments in re.findall(r"pip install ([^&;`\n]*)", README):
        names = [a.strip("'\"") for a in arguments.split()]
        assert not [n for n in names if n.startswith("asgiserve")], arguments
    for extra in ("standard", "http2", "wsgi", "test"):
        assert f"pip install -e '.[{extra}]'" in README


def test_readme_tables_are_not_cut_by_blank_lines() -> None:
    # A table row after a blank line renders as a paragraph, or as a table without a header.
    lines = README.splitlines()
    for number, line in enumerate(lines[1:-1], start=1):
        if line.strip() == "":
            before, after = lines[number - 1], lines[number + 1]
            assert not (before.startswith("|") and after.startswith("|") and "---" not in after), (
                f"README.md line {number + 1}: a blank line inside a table"
            )


def _skip_reasons(tree: ast.AST) -> list[ast.expr]:
    """The expressions a test file gives as skip reasons: pytest.skip(...), skipif(reason=...),
    importorskip(reason=...), and what functions named *skip_reason* return."""
    reasons: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.endswith(("pytest.skip", "skip")) and node.args:
                reasons.append(node.args[0])
            reasons.extend(k.value for k in node.keywords if k.arg == "reason")
        elif isinstance(node, ast.FunctionDef) and "skip_reason" in node.name:
            reasons.extend(
                r.value for r in ast.walk(node) if isinstance(r, ast.Return) and r.value is not None
            )
    return reasons


_PATHLIKE = re.compile(r"(?i)(path|dir|root|repo|tool|file|home|cwd)")


@pytest.mark.parametrize(
    "path", sorted(ROOT.joinpath("tests").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_skip_reasons_name_no_machine_paths(path: Path) -> None:
    for reason in _skip_reasons(ast.parse(path.read_text())):
        text = ast.unparse(reason)
        assert not re.search(r"['\"/]/(?:work|tmp|home|usr|var|opt|root)\b", text), text
        if isinstance(reason, ast.JoinedStr):
            for value in reason.values:
                if isinstance(value, ast.FormattedValue):
                    assert not _PATHLIKE.search(ast.unparse(value.value)), text
