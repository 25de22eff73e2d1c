"""Coverage-guided fuzzing (atheris) of the HTTP/1.1 parser backends: the shared part.

Each input is a byte stream and a way to cut it into reads. A finding is any exception other
than ProtocolError escaping a parser, a verdict that changes with the cuts, or a verdict that
differs from the other backend's. The targets are ``httptools_target.py`` and ``h11_target.py``;
see README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["asgiserve"]):
    from asgiserve.protocols import h11_parser, http11, httptools_parser

# The recording sink and the verdict of the differential test (not instrumented: not ours to
# cover).
from tests import test_parser_differential as differential

BACKENDS: dict[str, Any] = {
    "httptools": httptools_parser.HttptoolsParser,
    "h11": h11_parser.H11Parser,
}
# Small limits half of the time, so the bytes where a limit is crossed get covered too.
SMALL_LIMITS = {"max_request_line": 40, "max_head": 120, "max_fields": 3, "max_chunk_line": 16}


def split_input(raw: bytes) -> tuple[bytes, list[bytes], bool]:
    """Input layout: one flag byte (bit 0: small limits; bits 1-3: how many cuts), two bytes
    per cut (its offset), then the stream. The seeds in seeds/ start with a zero byte."""
    flags = raw[0] if raw else 0
    count = (flags >> 1) & 7
    offsets = raw[1 : 1 + 2 * count]
    data = raw[1 + 2 * count :]
    cuts = sorted(
        min(int.from_bytes(offsets[i : i + 2], "big"), len(data))
        for i in range(0, len(offsets) - 1, 2)
    )
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return data, reads, bool(flags & 1)


def one_input(backend: str, raw: bytes) -> None:
    data, reads, small = split_input(raw)
    limits = SMALL_LIMITS if small else {}
    whole = differential.run(BACKENDS[backend], [data], limits)
    split = differential.run(BACKENDS[backend], reads, limits)
    for outcome in (whole[1], split[1]):
        if isinstance(outcome, str) and outcome.startswith("EXC"):
            raise AssertionError(f"{backend}: {outcome}")
    if whole != split:
        raise AssertionError(f"{backend}: whole {whole!r} != split {split!r}")
    other = "h11" if backend == "httptools" else "httptools"
    theirs = differential.run(BACKENDS[other], [data], limits)
    if whole != theirs:
        raise AssertionError(f"{backend} {whole!r} != {other} {theirs!r}")


def main(backend: str) -> None:
    assert http11.RequestFramer  # the shared framer is what most inputs exercise
    atheris.Setup(sys.argv, lambda raw: one_input(backend, raw))
    atheris.Fuzz()
