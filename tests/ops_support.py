"""Shared pieces for the operations tests: config files, keys in a fresh store, a tiny OpenAI-shaped
upstream whose behaviour is chosen by the model name, and the gateway as an in-process app or as
a real `python -m proxy serve` subprocess (for signals, logs and exit status).

Upstream model names: `fast` answers at once; `slow-N-MS` streams N content events MS ms apart.
Upstream base paths: `/ok/v1` serves; `/limited/v1` answers every request with 429 (Retry-After 30).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

from proxy.app import build_app
from proxy.config import load_config
from proxy.store import Store
from proxy.types import Secret

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PEPPER = "ops-test-pepper-value-0123456789"
ADMIN_TOKEN = "ops-admin-token-canary-5f1d2c"
POOL_KEY = "pool-account-key-canary-77aa31"
RESALE_KEY = "resale-provider-key-canary-9c02e4"
ENV = {"OKM_KEY_PEPPER": PEPPER, "OKM_ADMIN_TOKEN": ADMIN_TOKEN, "POOL_KEY": POOL_KEY, "RESALE_KEY": RESALE_KEY}
MODELS = ("fast", "slow-3-50", "slow-10-50", "slow-10-100", "slow-20-100", "slow-40-100", "slow-80-100")


# --- the fake upstream ------------------------------------------------------------------------

def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if request.match_info["kind"] == "limited":
        error = {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "param": None,
                           "code": "rate_limit"}}
        return web.json_response(error, status=429, headers={"Retry-After": "30"})
    model = str(body.get("model"))
    count, delay_ms = (int(x) for x in model.split("-")[1:3]) if model.startswith("slow-") else (2, 0)
    usage = {"prompt_tokens": 7, "completion_tokens": count, "total_tokens": 7 + count}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "word " * count}
        answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
                  "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
        return web.json_response(answer)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(count):
        if i and delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        await response.write(_chunk(f"w{i} "))
    await response.write(_chunk(None, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        await response.write(b"data: " + orjson.dumps({"id": "chatcmpl-fake", "choices": [], "usage": usage}) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def fake_upstream_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/{kind}/v1/chat/completions", _chat)
    return app


@contextlib.asynccontextmanager
async def fake_upstream() -> AsyncIterator[str]:
    """Serve the fake upstream on 127.0.0.1:0; yields its root URL."""
    runner = web.AppRunner(fake_upstream_app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


# --- config and store -------------------------------------------------------------------------

def config_data(upstream: str, **sections: Any) -> dict[str, Any]:
    """A config whose Business lane (`resale/<model>`) and pool point at the fake upstream."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "store": {"path": "okm.sqlite3"},
        "limits": {"connect_timeout_s": 2, "first_byte_timeout_s": 5, "idle_timeout_s": 5},
        "providers": {"fake": {"base_url": f"{upstream}/ok/v1", "api_key_env": "RESALE_KEY"}},
        "lanes": {
            "cheap": {"pool": [{"name": "pool-ok", "base_url": f"{upstream}/ok/v1", "api_key_env": "POOL_KEY",
                                "models": list(MODELS)}]},
            "resale": {"models": {m: {"upstreams": [{"provider": "fake"}]} for m in MODELS}},
        },
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return data


def write_config(folder: Path, data: dict[str, Any], name: str = "gateway.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def make_keys(
    store_path: Path | str, *workspaces: str, limits: dict[str, dict[str, int]] | None = None
) -> dict[str, str]:
    """Create each workspace with one key (and optional per-workspace limits); returns name → key."""
    store = await Store.open(store_path)
    try:
        keys = {}
        for name in workspaces:
            await store.create_workspace(name)
            if limits and name in limits:
                await store.set_workspace_limits(name, **limits[name])
            _, key = await store.create_api_key(name, Secret(PEPPER))
            keys[name] = key.reveal()
        return keys
    finally:
        await store.close()


def usage_rows(store_path: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(store_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM usage ORDER BY started_at")]


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when the labelled series does not exist yet)."""
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        series, _, label_text = head.partition("{")
        if series != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if found == labels:
            return float(value)
    return 0.0


async def read_stream(response: aiohttp.ClientResponse) -> list[bytes]:
    """The `data:` payloads of an SSE answer, in order."""
    text = await response.read()
    return [line[6:] for line in text.split(b"\n") if line.startswith(b"data: ")]


# --- the gateway, in process ------------------------------------------------------------------

@contextlib.asynccontextmanager
async def app_gateway(config_path: Path) -> AsyncIterator[tuple[str, web.Application]]:
    """build_app on 127.0.0.1:0 with the runner options `serve` uses; yields (url, app)."""
    app = build_app(load_config(config_path, environ=ENV))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


# --- the gateway, as a process ----------------------------------------------------------------

_SERVING = re.compile(r"serving on (http://[\d.]+:\d+)")
_METRICS = re.compile(r"metrics on (http://[\d.]+:\d+)/metrics")


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    url: str = ""
    metrics_url: str = ""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if match := _SERVING.search(line):
                self.url = match.group(1)
            if match := _METRICS.search(line):
                self.metrics_url = match.group(1)
            self._changed.set()
        self._changed.set()

    async def wait_for_line(self, pattern: str, timeout: float = 10.0) -> str:
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                if self.proc.returncode is not None and self.proc.stdout is not None and self.proc.stdout.at_eof():
                    raise AssertionError(f"gateway exited without logging {pattern!r}:\n{self.output}")
                self._changed.clear()
                await self._changed.wait()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()


@contextlib.asynccontextmanager
async def process_gateway(config_path: Path, notify_socket: Path | None = None,
                          extra_env: dict[str, str] | None = None) -> AsyncIterator[GatewayProcess]:
    """`python -m proxy serve --config …` with stdout+stderr captured; killed if still running at exit."""
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("NOTIFY_SOCKET", None)
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = str(notify_socket)
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "proxy", "serve", "--config", str(config_path), cwd=str(ROOT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    gateway = GatewayProcess(proc)
    reader = asyncio.create_task(gateway._read())
    try:
        await gateway.wait_for_line(_SERVING.pattern)
        yield gateway
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(reader, 5)
        sys.stdout.write(gateway.output[-4000:] + "\n")  # shown by pytest only when a test fails
