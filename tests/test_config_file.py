"""--config FILE and [tool.asgiserve] in pyproject.toml: every option, by its long name.

Precedence: command line > environment > config file > built-in defaults.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from asgiserve import cli
from asgiserve.config import Config
from tests.conftest import start_cli


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the CLI up to the point where it would serve; return (result, config)."""
    seen: list[Config] = []

    def fake_run(config: Config) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr("asgiserve.supervisors.run", fake_run)
    monkeypatch.setattr("asgiserve.logging.configure_logging", lambda *a, **k: None)
    for name in (
        "ASGISERVE_PORT",
        "ASGISERVE_ROOT_PATH",
        "ASGISERVE_CONFIG",
        "FORWARDED_ALLOW_IPS",
    ):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[Any, Config | None]:
        result = CliRunner().invoke(cli.main, list(args), env=env)
        return result, (seen[-1] if seen else None)

    return run


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_options_are_read_from_the_config_file(invoke: Any, tmp_path: Path) -> None:
    path = write(
        tmp_path / "asgiserve.toml",
        """
        app = "tests.apps:app"
        port = 9001
        root_path = "/api"
        timeout_keep_alive = 75
        proxy_headers = false
        forwarded_allow_ips = ["10.0.0.0/8", "127.0.0.1"]
        header = ["x-frame-options: DENY"]
        reload_dir = ["src"]
        ssl_cert_reqs = 0
        access_log_format = "{status} {path}"
        limit_request_body = 1048576
        """,
    )
    result, config = invoke("--config", path)
    assert result.exit_code == 0, result.output
    assert config is not None
    assert config.app == "tests.apps:app"
    assert config.port == 9001
    assert config.root_path == "/api"
    assert config.timeouts.keep_alive == 75
    assert config.proxy_headers is False
    assert config.forwarded_allow_ips == ("10.0.0.0/8", "127.0.0.1")
    assert config.headers == (("x-frame-options", "DENY"),)
    assert config.reloader.dirs == ("src",)
    assert config.access_log_format == "{status} {path}"
    assert config.limits.request_body == 1048576


def test_pyproject_tool_table_is_read_from_the_working_directory(
    invoke: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path / "pyproject.toml",
        """
        [project]
        name = "demo"

        [tool.asgiserve]
        root_path = "/from-pyproject"
        """,
    )
    monkeypatch.chdir(tmp_path)
    result, config = invoke("tests.apps:app")
    assert result.exit_code == 0, result.output
    assert config is not None and config.root_path == "/from-pyproject"


def test_pyproject_without_the_table_is_ignored(
    invoke: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "demo"\n')
    monkeypatch.chdir(tmp_path)
    result, config = invoke("tests.apps:app")
    assert result.exit_code == 0 and config is not None and config.root_path == ""


def test_command_line_beats_environment_beats_file_beats_default(
    invoke: Any, tmp_path: Path
) -> None:
    path = write(tmp_path / "a.toml", 'port = 9001\nroot_path = "/file"\nbacklog = 17\n')
    env = {"ASGISERVE_PORT": "9002", "ASGISERVE_ROOT_PATH": "/env"}
    result, config = invoke("tests.apps:app", "--config", path, "--port", "9003", env=env)
    assert result.exit_code == 0, result.output
    assert config is not None
    assert config.port == 9003  # command line
    assert config.root_path == "/env"  # environment over file
    assert config.backlog == 17  # file over default
    assert config.timeouts.keep_alive == 5.0  # default


def test_unknown_keys_are_an_error_naming_the_key(invoke: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", "port = 1\ntimeout_keepalive = 3\n")
    result, config = invoke("tests.apps:app", "--config", path)
    assert result.exit_code == 2
    assert "unknown option 'timeout_keepalive'" in result.output
    assert config is None


def test_values_of_the_wrong_type_name_the_option(invoke: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", 'port = "eighty"\n')
    result, _ = invoke("tests.apps:app", "--config", path)
    assert result.exit_code == 2
    assert "port" in result.output


def test_invalid_toml_and_missing_files_are_reported(invoke: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", "port = \n")
    result, _ = invoke("tests.apps:app", "--config", path)
    assert result.exit_code == 2 and "not valid TOML" in result.output
    result, _ = invoke("tests.apps:app", "--config", str(tmp_path / "none.toml"))
    assert result.exit_code == 2 and "cannot read" in result.output


def test_config_file_through_the_real_cli(tmp_path: Path) -> None:
    path = write(tmp_path / "serve.toml", 'app = "tests.apps:app"\nheader = ["x-from: file"]\n')
    server = start_cli("--config", path)
    try:
        assert httpx.get(f"{server.url}/").headers["x-from"] == "file"
    finally:
        assert server.stop() == 0
