"""``await asgiserve.Server(asgiserve.Config(app)).serve()`` in a program of one's own: logging is
set up as the CLI does, unless the program configured logging itself.

Each case runs a small program in a fresh interpreter, so that its logging starts as a real
program's does (pytest's own handlers sit on the root logger of this process).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT, _env

PROGRAM = """
import asyncio, logging, sys
import asgiserve
from tests.apps import app

{setup}

async def main():
    server = asgiserve.Server(asgiserve.Config(app, port=0))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /embedded HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    await reader.read()
    writer.close()
    server.exit()
    await task
    print("ROOT HANDLERS", len(logging.getLogger().handlers), file=sys.stderr)

asyncio.run(main())
"""


def run_program(setup: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM).format(setup=setup)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def test_embedded_server_logs_the_startup_line_and_the_access_log() -> None:
    result = run_program("")
    assert "INFO:     Waiting for application startup." in result.stderr
    assert "INFO:     asgiserve running on http://127.0.0.1:" in result.stderr
    assert '"GET /embedded HTTP/1.1" 404' in result.stderr
    # Our handlers are on our loggers: the program's root logger is left alone.
    assert "ROOT HANDLERS 0" in result.stderr


def test_embedded_server_leaves_a_programs_own_logging_alone() -> None:
    setup = (
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, "
        "format='PROGRAM %(name)s %(message)s')"
    )
    result = run_program(setup)
    assert "PROGRAM asgiserve.error asgiserve running on http://127.0.0.1:" in result.stdout
    assert "PROGRAM asgiserve.access 127.0.0.1:" in result.stdout
    assert '"GET /embedded HTTP/1.1" 404' in result.stdout
    # No handler of ours: nothing of ours on stderr, the program's one root handler kept.
    assert "INFO:" not in result.stderr
    assert "ROOT HANDLERS 1" in result.stderr


def test_embedded_server_leaves_loggers_the_program_set_up_alone() -> None:
    setup = (
        "handler = logging.StreamHandler(sys.stdout)\n"
        "handler.setFormatter(logging.Formatter('MINE %(message)s'))\n"
        "logging.getLogger('asgiserve.error').addHandler(handler)\n"
        "logging.getLogger('asgiserve.error').setLevel(logging.INFO)\n"
    )
    result = run_program(setup)
    assert "MINE asgiserve running on" in result.stdout
    assert "INFO:     " not in result.stderr
