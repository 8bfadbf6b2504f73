"""The systemd unit (hardening, reload, graceful stop), the installer and the production config:
what an operator installs on the VM."""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from proxy.config import Limits, LogConfig, PoolPolicy, RateLimits, load_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "okm-gateway.service"
PRODUCTION = ROOT / "config" / "production.yaml"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
GENERATED = ("OKM_KEY_PEPPER", "OKM_ADMIN_TOKEN", "OKM_MASTER_KEY")
UPSTREAM_KEYS = ("OPENAI_API_KEY", "CHEAPAI_API_KEY", "POOL_A_KEY", "POOL_B_KEY", "POOL_C_KEY")


def unit_entries() -> dict[str, list[str]]:
    """`[Section] Key` → every value given (systemd allows repeated keys)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_unit_is_hardened() -> None:
    unit = unit_entries()
    expected = {
        "Service.Type": "notify", "Service.DynamicUser": "yes", "Service.StateDirectory": "okm-gateway",
        "Service.ProtectSystem": "strict", "Service.ProtectHome": "yes", "Service.NoNewPrivileges": "yes",
        "Service.PrivateTmp": "yes", "Service.PrivateDevices": "yes", "Service.UMask": "0077",
        "Service.Restart": "on-failure", "Service.KillSignal": "SIGTERM", "Service.CapabilityBoundingSet": "",
        "Service.RestrictNamespaces": "yes", "Service.LockPersonality": "yes",
        "Service.EnvironmentFile": "/etc/okm-gateway/okm.env", "Service.SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert set(unit["Service.RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in unit["Service.SystemCallFilter"]
    assert int(unit["Service.LimitNOFILE"][0]) >= 65536  # thousands of streams, two sockets each
    assert unit["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "-m proxy serve --config /etc/okm-gateway/gateway.yaml" in unit["Service.ExecStart"][0]
    assert not any("_KEY=" in v or "TOKEN=" in v for v in unit.get("Service.Environment", []))  # secrets: file only


def test_unit_bounds_memory_above_what_the_documented_limits_need() -> None:
    unit = unit_entries()
    size = {"M": 1 << 20, "G": 1 << 30}
    high, cap = (int(unit[k][0][:-1]) * size[unit[k][0][-1]] for k in ("Service.MemoryHigh", "Service.MemoryMax"))
    # the doc's budget: ~200 MiB at rest, plus 100 bodies of the default 4 MiB and 8 JSON answers of 64 MiB in flight
    assert (200 << 20) + 100 * (4 << 20) + 8 * (64 << 20) <= high < cap
    assert unit["Service.MemorySwapMax"] == ["0"]
    assert "MemoryMax" in (ROOT / "docs" / "robustness.md").read_text()


def test_stop_timeout_leaves_room_for_the_drain() -> None:
    config = yaml.safe_load(PRODUCTION.read_text())
    drain = config["drain"]
    budget = drain["deadline_s"] + drain.get("unready_delay_s", 0) + 10  # cut grace, cleanup, usage flush
    assert seconds(unit_entries()["Service.TimeoutStopSec"][0]) >= budget


def _testable_unit(tmp_path: Path) -> Path:
    """The unit with its interpreter path pointed at this checkout's venv, which exists here."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/okm-gateway/venv/bin/python", str(VENV_PYTHON)))
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    unit = _testable_unit(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stderr
    assert unit.name not in verify.stderr + verify.stdout  # no warning about any line of our unit
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=30)
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert exposure is not None, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 2.0  # docs/operations.md records the score (1.1 "OK")


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "install-systemd"), "--root", str(root), "--skip-venv", "--python", str(VENV_PYTHON)],
        capture_output=True, text=True, timeout=60, check=True,
    )


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_installer_stages_unit_config_env_file_and_wrapper(tmp_path: Path) -> None:
    _install(tmp_path / "a")
    _install(tmp_path / "b")
    a = tmp_path / "a"
    assert (a / "etc/systemd/system/okm-gateway.service").read_text() == UNIT.read_text()
    assert (a / "etc/okm-gateway/gateway.yaml").read_text() == PRODUCTION.read_text()
    env_path = a / "etc/okm-gateway/okm.env"
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((a / "usr/local/bin/okm-gateway-admin").stat().st_mode) == 0o755
    assert (a / "opt/okm-gateway/docs/operations.md").exists()
    env, other = _env_file(env_path), _env_file(tmp_path / "b/etc/okm-gateway/okm.env")
    assert set(env) == set(GENERATED) | set(UPSTREAM_KEYS)  # every variable the config names
    assert all(env[name] == "" for name in UPSTREAM_KEYS)  # for the operator to fill in
    assert all(len(env[name]) >= 40 and env[name] != other[name] for name in GENERATED)  # random per install
    assert len(base64.b64decode(env["OKM_MASTER_KEY"])) == 32

    # a re-run (an upgrade) keeps the config, the secrets and the operator's edits
    filled = {**env, **{name: f"sk-{name.lower()}-filled" for name in UPSTREAM_KEYS}}
    env_path.write_text("".join(f"{k}={v}\n" for k, v in filled.items()))
    (a / "etc/okm-gateway/gateway.yaml").write_text(PRODUCTION.read_text() + "\n# edited\n")
    _install(a)
    assert _env_file(env_path) == filled
    assert (a / "etc/okm-gateway/gateway.yaml").read_text().endswith("# edited\n")
    config = load_config(a / "etc/okm-gateway/gateway.yaml", environ=filled)  # what the service will load
    assert config.store_path == Path("/var/lib/okm-gateway/okm.sqlite3")


def test_production_config_is_real_and_keeps_metrics_on_loopback() -> None:
    environ = {name: "x" * 16 for name in GENERATED + UPSTREAM_KEYS}
    environ["OKM_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    config = load_config(PRODUCTION, environ=environ)
    assert config.metrics_listen is not None and config.metrics_listen.host == "127.0.0.1"
    kinds = [p.kind for p in config.providers.values()] + [a.kind for a in config.cheap_pool]
    kinds += [p.kind for p in config.byok_providers.values()]
    assert "mock" not in kinds
    assert all(p.api_key is not None for p in config.providers.values())
    assert all(a.api_key is not None and a.base_url.startswith("https://") for a in config.cheap_pool)


def test_configuration_doc_names_every_key() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    keys = [f"limits.{k}" for k in Limits.__dataclass_fields__] + [f"pool.{k}" for k in PoolPolicy.__dataclass_fields__]
    keys += [f"rate_limits.{k}" for k in RateLimits.__dataclass_fields__]
    keys += [f"log.{k}" for k in LogConfig.__dataclass_fields__]
    keys += ["listen", "metrics.listen", "store.path", "env_file", "admin.token_env", "key_pepper_env",
             "byok_master_key_env", "drain.deadline_s", "drain.unready_delay_s", "responses_stream", "api_key_env"]
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, missing
