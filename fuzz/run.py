"""Fuzz one parser for a bounded time: `python fuzz/run.py sse|body [libFuzzer flags]` (see scripts/fuzz).

Uses atheris (coverage-guided) when it is installed, else a hypothesis-driven random search with the
same checks. A failing input is written to fuzz/regressions/<target>/, which the test suite replays.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
TARGETS = ("sse", "body")


def save(target: str, data: bytes) -> Path:
    path = HERE / "regressions" / target / f"crash-{hashlib.sha1(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


def run_atheris(target: str, argv: list[str]) -> None:
    import atheris  # reason: optional dependency

    with atheris.instrument_imports(include=["proxy", "fuzz"]):
        from fuzz import checks  # reason: instrument the parsers before the first input

    def test_one(data: bytes) -> None:
        try:
            checks.one_input(target, data)
        except BaseException:
            print(f"saved {save(target, data)}", file=sys.stderr)
            raise

    atheris.Setup([sys.argv[0], *argv], test_one)
    atheris.Fuzz()


def run_hypothesis(target: str, seconds: float) -> None:
    from hypothesis import HealthCheck, given, settings  # reason: fallback only
    from hypothesis import strategies as st

    from fuzz import checks

    seeds = [p.read_bytes() for p in sorted((HERE / "seeds" / target).glob("*"))]
    data = st.one_of(st.binary(max_size=4096), st.sampled_from(seeds or [b""]).flatmap(
        lambda seed: st.binary(max_size=64).map(lambda noise: seed[: len(seed) // 2] + noise + seed[len(seed) // 2:])))
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(data)
        def batch(value: bytes) -> None:
            try:
                checks.one_input(target, value)
            except BaseException:
                print(f"saved {save(target, value)}", file=sys.stderr)
                raise

        batch()
        runs += 500
    print(f"{target}: {runs} inputs, no failure (hypothesis fallback)")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer flags]", file=sys.stderr)
        return 2
    target, argv = sys.argv[1], sys.argv[2:]
    try:
        import atheris  # noqa: F401  # reason: probe only
    except ImportError:
        seconds = next((float(a.split("=", 1)[1]) for a in argv if a.startswith("-max_total_time=")), 60.0)
        run_hypothesis(target, seconds)
        return 0
    os.environ.setdefault("PYTHONHASHSEED", "0")
    run_atheris(target, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
