"""Turns per-round results into medians, ratios, target verdicts, a text table and the JSON record.

Pure: numbers in, numbers and text out; it runs nothing and reads no files.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from enum import Enum
from typing import Any

TARGETS_ORDER = ("direct", "bare", "gateway")
MIN_SLOPE_STREAMS = 10_000


class Better(Enum):
    LOWER = "lower"
    HIGHER = "higher"


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    scenario: str
    metric: str
    better: Better


ROWS = (
    Row("non-stream c1 latency p50 (ms)", "nonstream_c1", "latency_p50_ms", Better.LOWER),
    Row("non-stream c1 latency p99 (ms)", "nonstream_c1", "latency_p99_ms", Better.LOWER),
    Row("non-stream c64 throughput (req/s)", "nonstream_c64", "per_s", Better.HIGHER),
    Row("non-stream c64 latency p50 (ms)", "nonstream_c64", "latency_p50_ms", Better.LOWER),
    Row("non-stream c64 proxy CPU/request (ms)", "nonstream_c64", "cpu_ms_per_req", Better.LOWER),
    Row("non-stream c64 proxy core use", "nonstream_c64", "proxy_util", Better.LOWER),
    Row("non-stream c64 load-side core use", "nonstream_c64", "load_util", Better.LOWER),
    Row("stream c1 TTFB p50 (ms)", "stream_c1", "ttfb_p50_ms", Better.LOWER),
    Row("stream c1 TTFB p99 (ms)", "stream_c1", "ttfb_p99_ms", Better.LOWER),
    Row("stream c1 whole stream p50 (ms)", "stream_c1", "latency_p50_ms", Better.LOWER),
    Row("stream cN throughput (streams/s)", "stream_cN", "per_s", Better.HIGHER),
    Row("stream cN TTFB p50 (ms)", "stream_cN", "ttfb_p50_ms", Better.LOWER),
    Row("stream cN TTFB p99 (ms)", "stream_cN", "ttfb_p99_ms", Better.LOWER),
    Row("stream cN proxy CPU/event (us)", "stream_cN", "cpu_us_per_event", Better.LOWER),
    Row("stream cN proxy CPU/stream (ms)", "stream_cN", "cpu_ms_per_req", Better.LOWER),
    Row("stream cN proxy core use", "stream_cN", "proxy_util", Better.LOWER),
    Row("stream cN load-side core use", "stream_cN", "load_util", Better.LOWER),
    Row("slow streams: RSS idle (MiB)", "hold", "rss_idle_mib", Better.LOWER),
    Row("slow streams: RSS peak (MiB)", "hold", "rss_peak_mib", Better.LOWER),
    Row("slow streams: RSS per stream (KiB)", "hold", "kib_per_stream", Better.LOWER),
    Row("slow streams: proxy core use", "hold", "cpu_util", Better.LOWER),
    Row("slow streams: proxy CPU/event incl. setup (us)", "hold", "cpu_us_per_event", Better.LOWER),
    Row("slow streams: load-side core use", "hold", "load_util", Better.LOWER),
    Row("sequential streams: RSS start (MiB)", "slope", "rss_start_mib", Better.LOWER),
    Row("sequential streams: RSS end (MiB)", "slope", "rss_end_mib", Better.LOWER),
    Row("sequential streams: fit, MiB per 20k", "slope", "growth_mib_per_20k", Better.LOWER),
)


def medians(runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, dict[str, float]]]:
    """runs[scenario][target] = one dict per round -> the median of every numeric field."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, by_target in runs.items():
        for target, rounds in by_target.items():
            keys = {k for r in rounds for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            out.setdefault(scenario, {})[target] = {
                k: round(statistics.median(r[k] for r in rounds if isinstance(r.get(k), (int, float))), 4)
                for k in sorted(keys)
            }
    return out


def value(summary: dict, scenario: str, target: str, metric: str) -> float | None:
    v = summary.get(scenario, {}).get(target, {}).get(metric)
    return v if isinstance(v, (int, float)) else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    goal: str
    measured: str
    met: bool | None
    margin: str

    def line(self) -> str:
        state = {True: "MET", False: "MISSED", None: "n/a"}[self.met]
        margin = f"; {self.margin}" if self.margin else ""
        return f"{state:6} {self.name}: {self.goal}; measured {self.measured}{margin}"


def _at_least(name: str, goal: float, got: float | None, what: str, extra: str = "") -> Verdict:
    if got is None:
        return Verdict(name, f"{what} >= {goal}x", "n/a", None, "")
    margin = f"{'above' if got >= goal else 'short'} by {abs(got - goal):.2f}x" + extra
    return Verdict(name, f"{what} >= {goal}x", f"{got:.2f}x", got >= goal, margin)


def _at_most(name: str, goal: float, got: float | None, what: str, unit: str) -> Verdict:
    if got is None:
        return Verdict(name, f"{what} <= {goal} {unit}", "n/a", None, "")
    margin = f"{'under' if got <= goal else 'over'} by {abs(got - goal):.2f} {unit}"
    return Verdict(name, f"{what} <= {goal} {unit}", f"{got:.2f} {unit}", got <= goal, margin)


def _added(summary: dict, scenario: str, metric: str) -> float | None:
    gw, direct = value(summary, scenario, "gateway", metric), value(summary, scenario, "direct", metric)
    return None if gw is None or direct is None else gw - direct


def _vs_bare(summary: dict, scenario: str, metric: str) -> float | None:
    return ratio(value(summary, scenario, "gateway", metric), value(summary, scenario, "bare", metric))


def _cpu_note(summary: dict, scenario: str, metric: str) -> str:
    """The throughput ratio the CPU cost implies (bare CPU per unit / gateway CPU per unit)."""
    inverse = _vs_bare(summary, scenario, metric)
    return f" (CPU-normalised: {1 / inverse:.2f}x)" if inverse else ""


def verdicts(summary: dict, hold_streams: int, slope_streams: int) -> list[Verdict]:
    return [
        _at_least("T1 non-stream throughput, 64 connections", 0.7, _vs_bare(summary, "nonstream_c64", "per_s"),
                  "gateway/bare relay", _cpu_note(summary, "nonstream_c64", "cpu_ms_per_req")),
        _at_most("T2 added latency, 1 connection, p50", 0.6, _added(summary, "nonstream_c1", "latency_p50_ms"),
                 "gateway - direct", "ms"),
        _at_most("T3 stream time to first byte, p50", 1.0, _added(summary, "stream_c1", "ttfb_p50_ms"),
                 "gateway - direct", "ms"),
        _at_least("T4 stream throughput", 0.7, _vs_bare(summary, "stream_cN", "per_s"),
                  "gateway/bare relay", _cpu_note(summary, "stream_cN", "cpu_us_per_event")),
        _at_most(f"T5 {hold_streams} concurrent slow streams, RSS peak", 150.0,
                 value(summary, "hold", "gateway", "rss_peak_mib"), "gateway RSS", "MiB"),
        _flat(slope_streams, value(summary, "slope", "gateway", "growth_mib_per_20k")),
        *hot_path_verdicts(summary, hold_streams),
    ]


def hot_path_verdicts(summary: dict, hold_streams: int) -> list[Verdict]:
    """The hot-path targets (docs/benchmarks.md), all against the bare relay of the same run."""
    bare_added = _added_by(summary, "nonstream_c1", "latency_p50_ms", "bare")
    return [
        _at_least("H1 non-stream throughput, 64 connections (must; aim 0.9x)", 0.75,
                  _vs_bare(summary, "nonstream_c64", "per_s"), "gateway/bare relay"),
        _at_most("H2 proxy CPU per request (must; aim 1.15x)", 1.35,
                 _vs_bare(summary, "nonstream_c64", "cpu_ms_per_req"), "gateway/bare relay", "x"),
        _at_most("H3 added latency p50, 1 connection, beyond the bare relay's own", 0.3,
                 None if bare_added is None else _opt_sub(_added(summary, "nonstream_c1", "latency_p50_ms"), bare_added),
                 "(gateway - direct) - (bare - direct)", "ms"),
        _at_most("H4 proxy CPU per stream event", 1.2, _vs_bare(summary, "stream_cN", "cpu_us_per_event"),
                 "gateway/bare relay", "x"),
        _at_most(f"H5 {hold_streams} slow streams, RSS peak", 1.5, _vs_bare(summary, "hold", "rss_peak_mib"),
                 "gateway/bare relay", "x"),
    ]


def _added_by(summary: dict, scenario: str, metric: str, target: str) -> float | None:
    got, direct = value(summary, scenario, target, metric), value(summary, scenario, "direct", metric)
    return None if got is None or direct is None else got - direct


def _opt_sub(a: float | None, b: float) -> float | None:
    return None if a is None else a - b


def _flat(streams: int, growth: float | None) -> Verdict:
    verdict = _at_most(f"T6 RSS flat over {streams} streams (linear fit, per 20k)", 2.0, growth, "growth", "MiB")
    if streams >= MIN_SLOPE_STREAMS or verdict.met is None:
        return verdict
    # A short run still sees caches warm up (SQLite pages, allocator arenas): it cannot tell that from a leak.
    return dataclasses.replace(verdict, met=None, margin=f"too few streams to judge (< {MIN_SLOPE_STREAMS}): "
                                                         "run the full bench")


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def table(summary: dict) -> str:
    head = f"{'metric':40} {'direct':>9} {'bare':>9} {'gateway':>9} {'gw/bare':>8} {'gw/direct':>9} {'gw-direct':>9}"
    lines = [head, "-" * len(head)]
    for row in ROWS:
        d, b, g = (value(summary, row.scenario, t, row.metric) for t in TARGETS_ORDER)
        if d is None and b is None and g is None:
            continue
        latency = row.better is Better.LOWER and "util" not in row.metric
        added = f"{g - d:+.3f}" if latency and d is not None and g is not None else ""
        rb, rd = ratio(g, b), ratio(g, d)
        lines.append(f"{row.label:40} {_fmt(d):>9} {_fmt(b):>9} {_fmt(g):>9} "
                     f"{'' if rb is None else f'{rb:.2f}x':>8} {'' if rd is None else f'{rd:.2f}x':>9} {added:>9}")
    return "\n".join(lines)


def ratios(summary: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in ROWS:
        d, b, g = (value(summary, row.scenario, t, row.metric) for t in TARGETS_ORDER)
        key = f"{row.scenario}.{row.metric}"
        out[key] = {"gateway/bare": ratio(g, b), "gateway/direct": ratio(g, d),
                    "gateway-direct": None if g is None or d is None else round(g - d, 4)}
    return out
