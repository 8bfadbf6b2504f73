"""`scripts/bench`: start the fake upstream, the bare relay and the gateway (auth, usage, metrics and
access log on), drive each with the same load in alternating rounds, and report medians and ratios.

Loopback only, bounded in time, and every process it starts is stopped by PID on any exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson

from bench import gateway, instructions, report, scenarios, wrk
from bench.procs import Procs, cores
from bench.profile import record
from bench.scenarios import Bench, Settings, Target
from bench.wire import chat_body
from testkit.gateway import GatewayProcess, ServerProcess

ROOT = Path(__file__).resolve().parent.parent
FULL = Settings(rounds=3, seconds=4.0, stream_conns=32, fast_events=50, hold_streams=1000, slow_events=240,
                slow_ms=50, slope_streams=20000, slope_conns=16)
QUICK = Settings(rounds=1, seconds=2.0, stream_conns=32, fast_events=50, hold_streams=1000, slow_events=80,
                 slow_ms=50, slope_streams=3000, slope_conns=16)
T0 = time.monotonic()
SCENARIOS = ("nonstream_c1", "nonstream_c64", "stream_c1", "stream_cN", "slope", "hold")


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:5.0f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one short round (about a minute)")
    p.add_argument("--rounds", type=int, help="alternating rounds per scenario (median reported)")
    p.add_argument("--seconds", type=float, help="length of each timed run")
    p.add_argument("--stream-conns", type=int, help="connections for the stream throughput run (default 32)")
    p.add_argument("--hold-streams", type=int, help="concurrent slow streams (default 1000)")
    p.add_argument("--slope-streams", type=int, help="sequential streams for the memory slope (default 20000)")
    p.add_argument("--lane", choices=("resale", "cheap"), default="resale", help="gateway lane under test")
    p.add_argument("--billing", action="store_true",
                   help="billing on: priced models, a prepaid workspace, a hold and a charge on every request")
    p.add_argument("--workers", type=int, default=1,
                   help="gateway worker processes (a supervisor and N workers on one port; not pinned to a core)")
    p.add_argument("--store-url", default=None, metavar="URL",
                   help="store for the gateway (default: a fresh SQLite file); a PostgreSQL URL must name an empty schema")
    p.add_argument("--only", type=lambda v: set(v.split(",")), default=None, metavar="LIST",
                   help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    p.add_argument("--gateway-src", type=Path, default=None, metavar="DIR",
                   help="run the gateway from DIR (a checkout or patched copy holding proxy/), for A/B runs")
    p.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk exists")
    p.add_argument("--profile", action="store_true", help="after measuring, profile the gateway with py-spy")
    p.add_argument("--profile-only", action="store_true", help="skip the measurements; only profile")
    p.add_argument("--instructions", action="store_true",
                   help="instead of timing: instructions per request and per stream event under valgrind's callgrind "
                        "(bare relay and gateway, billing on; repeatable, for A/B runs of one change)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results", help="results folder (git-ignored)")
    p.add_argument("--keep", action="store_true", help="keep the run folder (config, store, logs)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    unknown = (args.only or set()) - set(SCENARIOS)
    if unknown:
        sys.exit(f"error: --only: unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    if args.gateway_src is not None and not (args.gateway_src / "proxy" / "__main__.py").exists():
        sys.exit(f"error: --gateway-src: {args.gateway_src} has no proxy/ package")


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {"rounds": args.rounds, "seconds": args.seconds, "stream_conns": args.stream_conns,
                 "hold_streams": args.hold_streams, "slope_streams": args.slope_streams}
    return dataclasses.replace(QUICK if args.quick else FULL, **{k: v for k, v in overrides.items() if v is not None})


def machine(src: Path) -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    git = ["git", "-C", str(src)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "proxy"], capture_output=True, text=True)
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "kernel": platform.release(), "git_commit": commit.stdout.strip(),
            "proxy_tree_modified": bool(dirty.stdout.strip()), "loadavg_start": os.getloadavg()}


Servers = tuple[int, int, gateway.GatewaySetup, dict[str, int]]  # upstream port, bare port, gateway, pids


def start_servers(procs: Procs, run_dir: Path, settings: Settings, proxy_core: int | None,
                  load_core: int | None, gateway_src: Path | None, billing: bool = False, workers: int = 1,
                  store_url: str | None = None) -> Servers:
    py = sys.executable
    up = procs.server(ServerProcess([py, "-m", "testkit.upstream"], log=run_dir / "upstream.log",
                                    name="fake upstream"), load_core)
    bare = procs.server(ServerProcess([py, "-m", "bench.bare_relay", "--upstream", up.url], log=run_dir / "bare.log",
                                      name="bare relay"), proxy_core)
    profiles = gateway.Profiles(settings.fast_events, settings.slow_events, settings.slow_ms)
    setup = gateway.prepare(run_dir, up.port, profiles, billing, workers, store_url)
    # The access log goes to setup.log, one JSON line per request. N workers need the cores to themselves.
    gw = procs.server(GatewayProcess(setup.config, setup.env, setup.log, cwd=gateway_src, python=py),
                      proxy_core if workers == 1 else None)
    return up.port, bare.port, setup, {"upstream": up.pid, "bare": bare.pid, "gateway": gw.pid}


def make_targets(up_port: int, bare_port: int, gw_port: int, pids: dict[str, int],
                 profiles: gateway.Profiles) -> list[Target]:
    fast, slow = profiles.fast_prefix + "/v1/chat/completions", profiles.slow_prefix + "/v1/chat/completions"
    api = "/v1/chat/completions"
    return [Target("direct", up_port, fast, slow, None), Target("bare", bare_port, fast, slow, pids["bare"]),
            Target("gateway", gw_port, api, api, pids["gateway"])]


def scenario_table(bench: Bench) -> list[tuple[str, Callable[[Target], dict]]]:
    s = bench.settings
    return [
        ("nonstream_c1", lambda t: scenarios.nonstream(bench, t, 1, s.seconds)),
        ("nonstream_c64", lambda t: scenarios.nonstream(bench, t, 64, s.seconds)),
        ("stream_c1", lambda t: scenarios.stream(bench, t, 1, s.seconds)),
        ("stream_cN", lambda t: scenarios.stream(bench, t, s.stream_conns, s.seconds)),
    ]


def headline(result: dict) -> str:
    parts = [f"{result.get('per_s') or 0:,.0f}/s"]
    for key in ("latency_p50_ms", "ttfb_p50_ms"):
        if result.get(key) is not None:
            parts.append(f"{key.split('_')[0]} p50 {result[key]:.3f} ms")
    if result.get("proxy_util") is not None:
        parts.append(f"proxy {result['proxy_util']:.2f} core")
    if result.get("errors"):
        parts.append(f"ERRORS {result['errors']}: {result.get('first_error', '')[:120]}")
    return ", ".join(parts)


def measure(bench: Bench, targets: list[Target], only: set[str]) -> dict[str, dict[str, list[dict]]]:
    runs: dict[str, dict[str, list[dict]]] = {}
    table = [(name, run) for name, run in scenario_table(bench) if name in only]
    say("warming up every target")
    for target in targets:
        scenarios.nonstream(bench, target, 8, 1.0)
        scenarios.stream(bench, target, 4, 1.0)
    for r in range(bench.settings.rounds if table else 0):
        order = targets[r % 3:] + targets[: r % 3]  # a different target goes first each round
        for name, run in table:
            for target in order:
                result = run(target)
                runs.setdefault(name, {}).setdefault(target.name, []).append(result)
                say(f"round {r + 1}/{bench.settings.rounds} {name:14} {target.name:8} {headline(result)}")
    gw = targets[2]
    if "slope" in only:
        say(f"memory slope: {bench.settings.slope_streams} streams through the gateway")
        runs["slope"] = {"gateway": [scenarios.slope(bench, gw)]}
        result = runs["slope"]["gateway"][0]
        say(f"gateway RSS {result['rss_start_mib']} -> {result['rss_end_mib']} MiB, {headline(result)}")
    for target in targets[1:] if "hold" in only else []:
        say(f"{bench.settings.hold_streams} concurrent slow streams through {target.name}")
        result = scenarios.hold(bench, target)
        runs["hold"] = {**runs.get("hold", {}), target.name: [result]}
        say(f"{target.name}: RSS peak {result['rss_peak_mib']} MiB, CPU {result['cpu_util']} core, "
            f"{result['ok']} ok, {result['errors']} errors {result.get('first_error', '')[:120]}")
    return runs


def profile(bench: Bench, gw: Target, out_dir: Path, stamp: str) -> dict:
    seconds = max(6.0, bench.settings.seconds * 2)
    phases = {
        "nonstream_c64": lambda: scenarios.nonstream(bench, gw, 64, seconds + 1),
        "stream_cN": lambda: scenarios.stream(bench, gw, bench.settings.stream_conns, seconds + 1),
    }
    out = {}
    for name, load in phases.items():
        say(f"profiling the gateway under {name} for {seconds:.0f}s (py-spy)")
        raw = out_dir / f"profile-{stamp}-{name}.txt"
        summary, result = record(bench.procs, gw.pid or 0, raw, seconds, bench.load_core, load)
        out[name] = {"raw": str(raw.relative_to(ROOT)) if raw.is_relative_to(ROOT) else str(raw),
                     "load": headline(result), **summary.as_dict()}
    return out


def metrics_totals(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("okm_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            totals[status] = totals.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return totals


def print_profile(prof: dict) -> None:
    for name, p in prof.items():
        print(f"\nprofile under {name} ({p['samples']} event-loop samples; {p['load']}); by area:")
        for area, pct in p["by_area"]:
            print(f"  {pct:5.1f}%  {area}")
        print("  top self time:")
        for func, pct in p["top_self"][:15]:
            print(f"  {pct:5.1f}%  {func}")
        print("  top inclusive (gateway code):")
        for func, pct in [x for x in p["top_total"] if "proxy/" in x[0]][:12]:
            print(f"  {pct:5.1f}%  {func}")


def finish(args: argparse.Namespace, bench: Bench, runs: dict, meta: dict, prof: dict, stamp: str,
           metrics: dict) -> int:
    s = bench.settings
    summary = report.medians(runs) if runs else {}
    verdicts = report.verdicts(summary, s.hold_streams, s.slope_streams) if runs else []
    meta["loadavg_end"] = os.getloadavg()
    record_ = {"meta": meta, "settings": dataclasses.asdict(s), "summary": summary,
               "ratios": report.ratios(summary) if runs else {},
               "targets": [dataclasses.asdict(v) for v in verdicts], "target_lines": [v.line() for v in verdicts],
               "runs": runs, "profile": prof, "gateway_requests_by_status": metrics}
    path = args.out / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_bytes(orjson.dumps(record_, option=orjson.OPT_INDENT_2))
    shutil.copyfile(path, args.out / "latest.json")
    m = meta
    print(f"\nmachine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, aiohttp {m['aiohttp']}; "
          f"commit {m['git_commit']}{' (proxy/ modified)' if m['proxy_tree_modified'] else ''}; "
          f"pinning: proxy core {bench.proxy_core}, load core {bench.load_core}; load {m['load_generator']}; "
          f"lane {m['lane']}; loadavg {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}")
    print(f"settings: {s.rounds} rounds x {s.seconds:g}s, stream conns {s.stream_conns}, {s.fast_events} events; "
          f"{s.hold_streams} slow streams x {s.slow_events} events every {s.slow_ms} ms; "
          f"{s.slope_streams} sequential streams ({s.slope_conns} at a time)\n")
    if runs:
        print(report.table(summary))
        print("\ntargets (ratios from this run):")
        for v in verdicts:
            print("  " + v.line())
    if prof:
        print_profile(prof)
    print(f"\nresults: {path}")
    errors = sum(r.get("errors", 0) for by_t in runs.values() for rs in by_t.values() for r in rs)
    if errors:
        print(f"WARNING: {errors} requests failed during the bench; see 'first_error' in the JSON", file=sys.stderr)
    return 1 if errors else 0


def count_instructions(args: argparse.Namespace, run_dir: Path) -> int:
    if not instructions.available():
        sys.exit("error: --instructions needs valgrind (Debian package valgrind)")
    say("counting instructions under callgrind (about a minute)")
    try:
        found = instructions.main(run_dir, args.gateway_src)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(instructions.table(found))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    os.chdir(ROOT)  # children run `-m bench.…`, `-m testkit.…` and `-m proxy` from here (unless --gateway-src)
    settings = settings_from(args)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the shell started us ignoring it
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / f"run-{stamp}"
    run_dir.mkdir()
    proxy_core, load_core = cores()
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})  # the driver only samples; keep it off the proxy's core
    use_wrk = wrk.available() and not args.python_load
    meta = {**machine(args.gateway_src or ROOT), "command": "scripts/bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "lane": args.lane, "billing": args.billing, "workers": args.workers,
            "store": "postgresql" if args.store_url else "sqlite", "gateway_src": str(args.gateway_src or ROOT),
            "load_generator": "wrk (non-stream) + Python (streams)" if use_wrk else "Python"}
    if args.instructions:
        return count_instructions(args, run_dir)
    procs = Procs()
    try:
        say(f"starting servers in {run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir}")
        up_port, bare_port, setup, pids = start_servers(procs, run_dir, settings, proxy_core, load_core,
                                                        args.gateway_src, args.billing, args.workers, args.store_url)
        profiles = gateway.Profiles(settings.fast_events, settings.slow_events, settings.slow_ms)
        targets = make_targets(up_port, bare_port, setup.port, pids, profiles)
        fast_model, slow_model = f"{args.lane}/bench-fast", f"{args.lane}/bench-slow"
        wrk_env = wrk.write_script(run_dir, chat_body(fast_model, False)) if use_wrk else {}
        bench = Bench(procs, run_dir, proxy_core, load_core, pids["upstream"], setup.key, fast_model, slow_model,
                      settings, use_wrk, wrk_env)
        runs = {} if args.profile_only else measure(bench, targets, args.only or set(SCENARIOS))
        prof = profile(bench, targets[2], args.out, stamp) if args.profile or args.profile_only else {}
        metrics = metrics_totals(setup.port)
    finally:
        say("stopping every process the bench started")
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return finish(args, bench, runs, meta, prof, stamp, metrics)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process the bench started was stopped", file=sys.stderr)
        sys.exit(130)
