"""The architecture's layering rules (docs/architecture.md), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asgiserve"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).glob("*.py"))


def forbidden(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("path", modules("protocols"), ids=lambda p: p.name)
def test_protocol_cores_are_sans_io(path: Path) -> None:
    bad = forbidden(
        imports_of(path),
        ("asyncio", "uvloop", "asgiserve.asgi", "asgiserve.config", "asgiserve.transport", "click"),
    )
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", modules("asgi"), ids=lambda p: p.name)
def test_asgi_layer_knows_no_wire_protocol(path: Path) -> None:
    bad = forbidden(
        imports_of(path),
        ("asgiserve.protocols", "asgiserve.transport", "asgiserve.config", "click"),
    )
    assert not bad, f"{path.name} imports {bad}"


def test_only_the_cli_imports_click() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "cli.py" and forbidden(imports_of(path), ("click",))
    ]
    assert offenders == []


@pytest.mark.parametrize("path", modules("supervisors"), ids=lambda p: p.name)
def test_supervisors_know_no_protocol_and_never_load_the_app(path: Path) -> None:
    # They take a Config and sockets; the app is imported in the workers only.
    bad = forbidden(
        imports_of(path),
        (
            "asgiserve.protocols",
            "asgiserve.asgi",
            "asgiserve.loading",
            "asgiserve.transport.connection",
            "asgiserve.transport.websocket",
            "click",
        ),
    )
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", modules("transport"), ids=lambda p: p.name)
def test_the_transport_imports_no_app(path: Path) -> None:
    # The server's own answer to static files goes through a narrow interface the transport
    # owns (transport/state.py: RememberedFile), not through the app's classes.
    bad = forbidden(imports_of(path), ("asgiserve.apps",))
    assert not bad, f"{path.name} imports {bad}"
