"""Table-driven tests for the bench's pure parts: the HTTP response parser, the profile summary and
the report's medians and verdicts. Run with `.venv/bin/python -m pytest -q bench/test_bench.py`.
"""

from __future__ import annotations

import os

import pytest

from bench import instructions, report
from bench.profile import area_of, summarize
from bench.wire import ResponseParser

SSE = b"data: {\"a\":1}\n\ndata: [DONE]\n\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SSE), SSE)
LENGTH = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!"


@pytest.mark.parametrize(
    ("wire", "raw_chunked", "split", "status", "body"),
    [
        (LENGTH, False, 1000, 404, b"nope!"),
        (LENGTH, False, 1, 404, b"nope!"),
        (CHUNKED, False, 1000, 200, SSE),
        (CHUNKED, False, 3, 200, SSE),
        (CHUNKED, True, 1000, 200, SSE),  # raw mode keeps the framing: events are still countable
        (CHUNKED, True, 2, 200, SSE),
    ],
)
def test_parser_reads_whole_responses_however_split(wire: bytes, raw_chunked: bool, split: int, status: int,
                                                    body: bytes) -> None:
    parser = ResponseParser(raw_chunked)
    parts: list[bytes] = []
    done = False
    for i in range(0, len(wire), split):
        assert not done
        got, done = parser.feed(wire[i : i + split])
        parts += got
    assert done and parser.status == status
    joined = b"".join(parts)
    assert (body in joined) if raw_chunked else joined == body
    assert joined.count(b"data: {") == body.count(b"data: {")


def test_parser_handles_keep_alive_responses_back_to_back() -> None:
    parser = ResponseParser()
    assert parser.feed(LENGTH) == ([b"nope!"], True)
    assert parser.feed(CHUNKED)[1] and parser.status == 200


@pytest.mark.parametrize(
    ("frames", "area"),
    [
        (["serve (proxy/server.py:1)", "labels (prometheus_client/metrics.py:2)"], "metrics (prometheus_client + plain counters)"),
        (["serve (proxy/server.py:1)", "redact (proxy/redaction.py:3)"], "access log (logging + redaction)"),
        (["serve (proxy/server.py:1)", "take_hold (proxy/billing/holds.py:3)"], "billing (holds, cost)"),
        (["serve (proxy/server.py:1)", "check (proxy/workspaces/auth.py:3)"], "auth (key check, HMAC)"),
        (["serve (proxy/server.py:1)", "feed (proxy/relay/sse.py:3)"], "SSE decode + relay inspection"),
        (["serve (proxy/server.py:1)", "pump (proxy/relay.py:4)", "write (asyncio/selector_events.py:5)"],
         "socket I/O + epoll (send/recv syscalls)"),
        (["serve (proxy/server.py:1)", "start (aiohttp/web_protocol.py:6)"],
         "aiohttp server + event loop (parse, dispatch, write)"),
    ],
)
def test_each_sample_lands_in_one_area(frames: list[str], area: str) -> None:
    assert area_of(frames) == area


def test_summary_counts_only_the_event_loop_thread() -> None:
    raw = ("thread (1): MainThread;a (proxy/x.py:1);b (y.py:2) 3\n"
           "thread (1): MainThread;a (proxy/x.py:9) 1\n"
           "thread (2): Thread-1;w (aiosqlite/core.py:59) 7\n")
    s = summarize(raw)
    assert s.samples == 4
    assert s.top_self[0] == ("b (y.py)", 75.0)
    assert ("a (proxy/x.py)", 100.0) in s.top_total
    assert s.other_threads == [("Thread-1: w (aiosqlite/core.py:59)", 7)]


def test_medians_and_verdicts() -> None:
    runs = {
        "nonstream_c64": {"bare": [{"per_s": 1000, "cpu_ms_per_req": 0.2}, {"per_s": 3000, "cpu_ms_per_req": 0.2}],
                          "gateway": [{"per_s": 1600, "cpu_ms_per_req": 0.25}]},
        "nonstream_c1": {"direct": [{"latency_p50_ms": 0.1}], "gateway": [{"latency_p50_ms": 0.9}]},
        "hold": {"gateway": [{"rss_peak_mib": 151.0}]},
    }
    summary = report.medians(runs)
    assert summary["nonstream_c64"]["bare"]["per_s"] == 2000
    lines = {v.name.split()[0]: v for v in report.verdicts(summary, 1000, 20000)}
    assert lines["T1"].met is True and "CPU-normalised: 0.80x" in lines["T1"].margin
    assert lines["T2"].met is False and lines["T2"].measured == "0.80 ms"
    assert lines["T5"].met is False
    assert lines["T3"].met is None  # not measured in this run
    assert lines["H1"].met is True and lines["H1"].measured == "0.80x"  # the 0.75x must (the 0.9x aim is not judged)
    assert lines["H2"].met is True and lines["H2"].measured == "1.25 x"
    assert lines["H3"].met is None  # no bare relay at 1 connection in this run


def test_hot_path_latency_is_judged_against_the_bare_relays_own() -> None:
    summary = {"nonstream_c1": {"direct": {"latency_p50_ms": 0.1}, "bare": {"latency_p50_ms": 0.4},
                                "gateway": {"latency_p50_ms": 0.75}},
               "hold": {"bare": {"rss_peak_mib": 60.0}, "gateway": {"rss_peak_mib": 95.0}}}
    lines = {v.name.split()[0]: v for v in report.hot_path_verdicts(summary, 1000)}
    assert lines["H3"].met is False and lines["H3"].measured == "0.35 ms"
    assert lines["H5"].met is False and lines["H5"].measured == "1.58 x"
    assert lines["H1"].met is None and lines["H4"].met is None


def test_a_short_slope_run_is_not_judged() -> None:
    summary = {"slope": {"gateway": {"growth_mib_per_20k": 4.0}}}
    by_streams = {n: next(v for v in report.verdicts(summary, 1000, n) if v.name.startswith("T6")) for n in (3000, 20000)}
    assert by_streams[3000].met is None and "run the full bench" in by_streams[3000].margin
    assert by_streams[20000].met is False


def test_instruction_totals_are_read_from_the_newest_dump(tmp_path) -> None:
    (tmp_path / "callgrind.out.7.1").write_text("events: Ir\nsummary: 100\n")
    (tmp_path / "callgrind.out.8.1").write_text("events: Ir\ntotals: 999\n")  # another process
    newest = tmp_path / "callgrind.out.7.2"
    newest.write_text("events: Ir\nfn=x\n1 5\ntotals: 4200\n")
    os.utime(newest, (2e9, 2e9))
    assert instructions._total(tmp_path, 7) == 4200
    table = instructions.table({"bare": {"per_request": 1000, "per_event": 10},
                                "gateway": {"per_request": 1500, "per_event": 25},
                                "ratio": {"per_request": 1.5, "per_event": 2.5}})
    assert "1.50x" in table and "2.50x" in table and "1,500" in table
