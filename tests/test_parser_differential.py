"""Differential fuzzing of the two HTTP/1.1 parser backends (issue 16).

A hypothesis strategy builds request byte streams (valid requests, pipelined pairs, chunked
bodies with extensions and trailers), mutates them (bytes, whitespace, CR/LF, duplicate and
malformed header lines, Host and target forms, versions) and cuts them into reads at random
points. Each backend is fed the stream whole and in those reads, through a recording sink; all
four runs must give the same verdict: the same requests (method, target, version, headers,
body, keep-alive, upgrade) followed by the same error status, if any. Any exception other than
:class:`ProtocolError` escaping a parser is a failure too.

The suite runs a fixed-seed sample of a few seconds. The long run is one command::

    python -m tests.test_parser_differential --cases 200000 --jobs 2

which counts every disagreement instead of stopping at the first (see fuzz/README.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from asgiserve.protocols.errors import ProtocolError
from asgiserve.protocols.h11_parser import H11Parser
from asgiserve.protocols.http11 import RequestHead

httptools_parser = pytest.importorskip("asgiserve.protocols.httptools_parser")
HttptoolsParser = httptools_parser.HttptoolsParser

BACKENDS: dict[str, Any] = {"httptools": HttptoolsParser, "h11": H11Parser}


class RecordingSink:
    """A RequestSink that records what a parser reports, body pieces merged."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_request(self, head: RequestHead) -> bool:
        self.events.append(
            (
                "request",
                head.method,
                head.target,
                head.path,
                head.query,
                head.http_version,
                tuple(head.headers),
                head.keep_alive,
                head.expect_continue,
                head.content_length,
                head.chunked,
                head.upgrade,
            )
        )
        # Switch protocols for WebSocket upgrades, so that where the new protocol's bytes
        # start is compared too; decline the others, so that parsing goes on.
        return head.upgrade == b"websocket"

    def on_body(self, data: bytes) -> None:
        assert type(data) is bytes
        if not data:
            return
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def on_request_end(self) -> None:
        self.events.append(("end",))

    def on_upgrade(self, rest: bytes) -> None:
        self.events.append(("upgrade", rest))


Verdict = tuple[tuple[tuple[Any, ...], ...], object]


def run(backend: Any, reads: list[bytes], limits: dict[str, int]) -> Verdict:
    """Feed the reads; return (events, outcome), outcome being "ok", a status or "EXC ..."."""
    sink = RecordingSink()
    parser = backend(sink, **limits)
    outcome: object = "ok"
    try:
        for data in reads:
            if sink.events and sink.events[-1][0] == "upgrade":
                # After a switch, the connection hands later reads to the new protocol.
                sink.events[-1] = ("upgrade", sink.events[-1][1] + data)
            else:
                parser.feed(data)
    except ProtocolError as exc:
        outcome = exc.status
    except Exception as exc:  # noqa: BLE001 - anything else escaping a parser is the finding
        outcome = f"EXC {type(exc).__name__}: {exc}"
    events = sink.events
    if outcome == "ok":
        # A stream that ends inside a head or a body is no verdict yet: what the parser holds
        # back (a partial head) or has already passed on (part of a body) may differ.
        while events and events[-1][0] != "end" and events[-1][0] != "upgrade":
            events = events[:-1]
        outcome = "ok"
    return tuple(events), outcome


# -- the request strategy ------------------------------------------------------------------

METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"CONNECT", b"PRI", b"FROB"]
TARGETS = [
    b"/",
    b"/a/b?x=1&y",
    b"/%20?",
    b"*",
    b"http://example.com/p?q",
    b"https://h:8/",
    b"http://",
    b"example.com:443",
    b"a",
    b"/a#f",
    b"/\xc3\xa9",
    b'/"<>{}|\\^`',
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1", b"http/1.1"]
HOSTS = [b"a", b"example.com:8080", b"[::1]:80", b"", b"a b", b"user@a", b"a:b:c", b"%41", b"a "]
FIELD_NAMES = [b"X-A", b"Accept", b"Cookie", b"Expect", b"Connection", b"Upgrade", b"Trailer"]
FIELD_VALUES = [
    b"1",
    b"",
    b" padded\t",
    b"a, b",
    b"100-continue",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"Upgrade, close",
    b"websocket",
    b"h2c",
    b"\xff\x80",
    b"a\tb",
]
TRANSFER_ENCODINGS = [b"chunked", b",chunked", b"chunked,", b"gzip, chunked", b"chunked, gzip"]
CONTENT_LENGTHS = [b"0", b"3", b"5", b"0005", b"+5", b"5, 5", b"18446744073709551616", b" 5 "]
OWS = [b" ", b" ", b"", b"\t", b" \t "]
INTERESTING_BYTES = list(b' \t\r\n\x00\x0b\x0c\x7f\xff:;=",0aA/?#%@[]')

field = st.tuples(
    st.sampled_from(FIELD_NAMES) | st.binary(min_size=1, max_size=6),
    st.sampled_from(FIELD_VALUES) | st.binary(max_size=8),
)


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    parts = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=12), max_size=3)):
        size = b"%x" % len(data)
        if draw(st.booleans()):
            size = b"0" * draw(st.integers(0, 20)) + size
        extension = draw(
            st.sampled_from(
                [b"", b";a", b";a=b", b';a="q\\"x"', b" ; a = b", b";a=" + b"x" * 40, b';a="open']
            )
        )
        parts.append(size + extension + b"\r\n" + data + b"\r\n")
    parts.append(b"0" + draw(st.sampled_from([b"", b";z"])) + b"\r\n")
    for name, value in draw(st.lists(field, max_size=2)):
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from(VERSIONS[:2]) | st.sampled_from(VERSIONS))
    fields: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 9)):
        fields.append((b"Host", draw(st.sampled_from(HOSTS[:2]) | st.sampled_from(HOSTS))))
    fields += draw(st.lists(field, max_size=3))
    body = b""
    framing = draw(st.sampled_from(["none", "none", "length", "chunked", "both"]))
    if framing in ("length", "both"):
        body = draw(st.binary(max_size=8))
        length = draw(st.sampled_from([b"%d" % len(body)]) | st.sampled_from(CONTENT_LENGTHS))
        fields.append((b"Content-Length", length))
    if framing in ("chunked", "both"):
        fields.append((b"Transfer-Encoding", draw(st.sampled_from(TRANSFER_ENCODINGS))))
        body = draw(chunked_body())
    if draw(st.integers(0, 5)) == 0:
        fields.append((b"Connection", b"Upgrade"))
        fields.append((b"Upgrade", draw(st.sampled_from([b"websocket", b"foo", b"h2c"]))))
    fields = draw(st.permutations(fields))
    head = method + b" " + target + b" " + version + b"\r\n"
    for name, value in fields:
        # OWS before and after the value is not part of it (RFC 9110 section 5.5).
        before, after = draw(st.sampled_from(OWS)), draw(st.sampled_from(OWS))
        head += name + b":" + before + value + after + b"\r\n"
    return head + b"\r\n" + body


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Apply a few mutations: a byte replaced, inserted or deleted, a line duplicated."""
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.integers(0, 4))
        byte = bytes([draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))])
        if kind == 0:
            data = data[:at] + byte + data[at + 1 :]
        elif kind == 1:
            data = data[:at] + byte + data[at:]
        elif kind == 2:
            data = data[:at] + data[at + 1 :]
        elif kind == 3:
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            if end != -1:
                data = data[:start] + data[start : end + 1] * 2 + data[end + 1 :]
        else:
            data = (
                data[:at] + draw(st.sampled_from([b"  ", b"\r\n", b"\n", b"\r\n\r\n"])) + data[at:]
            )
    return data


@st.composite
def stream(draw: st.DrawFn) -> tuple[bytes, list[bytes], dict[str, int]]:
    """A request stream, mutated, and the reads it arrives in; limits for both backends."""
    data = b"".join(draw(st.lists(request(), min_size=1, max_size=3)))
    if draw(st.integers(0, 3)):
        data = draw(mutated(data))
    if draw(st.booleans()):
        data = draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"\n"])) + data
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    limits: dict[str, int] = {}
    if draw(st.integers(0, 3)) == 0:
        # Small limits, so that the bytes where a limit is crossed are exercised too.
        limits = {
            "max_request_line": draw(st.integers(8, 64)),
            "max_head": draw(st.integers(16, 160)),
            "max_fields": draw(st.integers(0, 4)),
            "max_chunk_line": draw(st.integers(2, 24)),
        }
    return data, reads, limits


def disagreements(data: bytes, reads: list[bytes], limits: dict[str, int]) -> list[str]:
    """What differs between the backends, or between whole and split feeds; also escapes."""
    found: list[str] = []
    verdicts = {}
    for name, backend in BACKENDS.items():
        whole = run(backend, [data], limits)
        split = run(backend, reads, limits)
        verdicts[name] = whole
        for outcome in (whole[1], split[1]):
            if isinstance(outcome, str) and outcome.startswith("EXC"):
                found.append(f"escape: {name}: {outcome}")
        if whole != split:
            found.append(f"split: {name}: whole {whole!r} != split {split!r}")
    if verdicts["httptools"] != verdicts["h11"]:
        found.append(f"backends: httptools {verdicts['httptools']!r} != h11 {verdicts['h11']!r}")
    return found


SUITE_EXAMPLES = 300


@settings(
    max_examples=SUITE_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(stream())
def test_backends_agree_on_generated_streams_whole_and_split(
    case: tuple[bytes, list[bytes], dict[str, int]],
) -> None:
    data, reads, limits = case
    assert disagreements(data, reads, limits) == [], (data, reads, limits)


def survey(
    cases: int, random_seed: int, show: int
) -> tuple[int, Counter[str], dict[str, list[str]]]:
    """Run ``cases`` generated streams; count every disagreement, keep ``show`` of each kind."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    ran = 0

    @seed(random_seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(stream())
    def one_case(case: tuple[bytes, list[bytes], dict[str, int]]) -> None:
        nonlocal ran
        ran += 1
        data, reads, limits = case
        for finding in disagreements(data, reads, limits):
            kind = finding.split(":", 1)[0]
            counts[kind] += 1
            shown = examples.setdefault(kind, [])
            if len(shown) < show:
                shown.append(f"{finding}\n    input {data!r} reads {reads!r} limits {limits}")

    one_case()
    return ran, counts, examples


def main(argv: list[str] | None = None) -> int:
    """The long run: count every disagreement in ``--cases`` generated streams."""
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--cases", type=int, default=200_000)
    options.add_argument("--jobs", type=int, default=1, help="processes, each with its own seed")
    options.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    options.add_argument("--show", type=int, default=5, help="examples printed per kind")
    arguments = options.parse_args(argv)
    first_seed = arguments.seed if arguments.seed is not None else random.getrandbits(32)
    jobs = max(1, arguments.jobs)
    shares = [arguments.cases // jobs + (i < arguments.cases % jobs) for i in range(jobs)]
    started = time.perf_counter()
    with multiprocessing.Pool(jobs) as pool:
        results = pool.starmap(
            survey, [(share, first_seed + i, arguments.show) for i, share in enumerate(shares)]
        )
    elapsed = time.perf_counter() - started
    cases = sum(ran for ran, _, _ in results)
    counts: Counter[str] = sum((found for _, found, _ in results), Counter())
    print(
        f"{cases} cases in {elapsed:.0f} s ({jobs} jobs, seeds {first_seed}..{first_seed + jobs - 1}):"
        f" {dict(counts) or 'no disagreement'}"
    )
    for kind in counts:
        print(f"-- {kind} ({counts[kind]})")
        shown = [example for _, _, examples in results for example in examples.get(kind, [])]
        print("\n".join(shown[: arguments.show]))
    return 1 if counts else 0


if __name__ == "__main__":
    sys.exit(main())
