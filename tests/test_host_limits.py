"""The per-worker overload shield, said host-wide: check-config and the supervisor's start-up log
tell an operator what N workers × limits.max_concurrent_requests admits on one host."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from proxy.config import Limits, load_config
from proxy.host_limits import host_total, workspace_cap
from testkit.gateway import ROOT
from tests.ops_support import ENV, config_data, write_config


def test_the_host_total_is_workers_times_each_workers_caps(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, config_data("http://127.0.0.1:9", workers=4)), ENV)
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, max_concurrent_requests=300,
                                                                    max_workspace_share=0.25))
    assert host_total(config) == (
        "limits apply per worker: 4 workers × limits.max_concurrent_requests 300 = up to 1200 requests in flight "
        "on this host; one workspace up to 75 per worker (300 on this host)")
    assert host_total(dataclasses.replace(config, workers=1)) is None  # one process: the setting is the total
    assert workspace_cap(Limits().max_concurrent_requests, 0.0001) == 1


def test_check_config_says_the_host_total_with_several_workers(tmp_path: Path) -> None:
    for workers, expected in ((3, "3 workers × limits.max_concurrent_requests 2000 = up to 6000"), (1, None)):
        config = write_config(tmp_path, config_data("http://127.0.0.1:9", workers=workers))
        done = subprocess.run([sys.executable, "-m", "proxy", "check-config", "--config", str(config)],
                              capture_output=True, text=True, timeout=60, cwd=str(ROOT), env={"PATH": "/usr/bin:/bin", **ENV})
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].endswith("billing off)")
        if expected is None:
            assert len(lines) == 1
        else:
            assert expected in lines[1]
