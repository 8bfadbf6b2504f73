"""Screenshots of the console's main pages (`scripts/screenshots`; PNGs for docs/console.md).

Runs the gateway in-process on the default config (config/gateway.yaml, built-in mock provider)
with a throwaway store and secrets, walks a new customer through it in headless chromium, and
writes one PNG per page. The 30 days of usage behind the charts are example rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

import openai
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy import appkeys  # noqa: E402  # reason: needs the repo root on sys.path first
from proxy.app import build_app  # noqa: E402  # reason: as above
from proxy.config import load_config  # noqa: E402  # reason: as above
from proxy.store.rows import UsageRow  # noqa: E402  # reason: as above
from proxy.workspaces.crypto import generate_master_key  # noqa: E402  # reason: as above

EMAIL, PASSWORD, WORKSPACE = "ada@example.com", "a long demo password", "acme"


async def _start(folder: Path) -> tuple[web.AppRunner, web.Application, str]:
    raw = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    raw.update(listen={"host": "127.0.0.1", "port": 0}, store={"path": str(folder / "okm.sqlite3")})
    raw.pop("env_file", None)
    raw["log"] = {"level": "warning", "access_log": False}
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {"OKM_KEY_PEPPER": secrets.token_urlsafe(32), "OKM_MASTER_KEY": generate_master_key(),
           "OKM_ADMIN_TOKEN": secrets.token_urlsafe(32)}
    app = build_app(load_config(path, environ=env))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, app, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _example_usage(app: web.Application) -> None:
    store = app[appkeys.STORE]
    ws = await store.get_workspace(WORKSPACE)
    key = (await store.list_api_keys(WORKSPACE))[0]
    prices = {"cheap": (500_000, 2_000_000, 0), "resale": (1_250_000, 10_000_000, 0), "byok": (0, 0, 200)}
    rng, now, rows = random.Random(3), time.time(), []
    for i in range(1500):
        age = rng.triangular(0, 29 * 86400, 0)
        lane = rng.choices(("cheap", "resale", "byok"), (6, 3, 1))[0]
        model = {"cheap": "cheap/gpt-5.4-mini", "resale": "resale/gpt-5.4", "byok": "byok/openai/gpt-5.4"}[lane]
        prompt, completion = rng.randint(50, 1500), rng.randint(20, 900)
        per_in, per_out, per_request = prices[lane]
        cost = -(-(prompt * per_in + completion * per_out) // 1_000_000) + per_request  # rounded up, as billed
        rows.append(UsageRow(f"req_example_{i:05d}", now - 3600 - age, ws.id, key.id, lane, model, "mock",
                             "chat/completions", False, 200, "ok", prompt, completion, prompt + completion,
                             cost_micros=cost))
    await store.add_ledger_entry(WORKSPACE, 20_000_000, "topup", "invoice 1042", "admin")
    await store.write_usage([], rows)


async def _shoot(base: str, app: web.Application, out: Path, chromium: str) -> list[Path]:
    from playwright.async_api import async_playwright

    shots: list[Path] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        context = await browser.new_context(base_url=base, viewport={"width": 1280, "height": 860})
        page = await context.new_page()

        async def shot(name: str) -> None:
            target = out / f"console-{name}.png"
            await page.screenshot(path=str(target), full_page=True)
            shots.append(target)

        await page.goto("/console/login")
        await shot("login")
        await page.goto("/console/signup")
        await page.fill("input[name=email]", EMAIL)
        await page.fill("input[name=password]", PASSWORD)
        await page.fill("input[name=workspace]", WORKSPACE)
        await shot("signup")
        await page.click("button[type=submit]")
        await page.wait_for_url(f"**/console/w/{WORKSPACE}/")
        await shot("overview-new")
        await page.click("nav.tabs >> text=API keys")
        await page.fill("input[name=name]", "production backend")
        await page.click("text=Create key")
        await shot("keys-created")
        key = (await page.inner_text("#new-key")).strip()
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0) as sdk:
            for model in ("cheap/gpt-5.4", "resale/gpt-5.4"):
                await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello"}])
        await asyncio.sleep(1.5)  # the usage writer flushes its batch
        await _example_usage(app)
        await page.goto(f"/console/w/{WORKSPACE}/")
        await shot("overview")
        await page.goto(f"/console/w/{WORKSPACE}/keys")
        await shot("keys")
        await page.goto(f"/console/w/{WORKSPACE}/byok")
        await shot("byok-rollout")
        await app[appkeys.STORE].set_byok_enabled(WORKSPACE, True)
        await page.reload()
        await page.fill("#byok-openai input[name=key]", "sk-demo-customer-key-7f3a")
        await page.click("#byok-openai button:has-text('Save')")
        await shot("byok")
        await page.goto(f"/console/w/{WORKSPACE}/usage")
        await shot("usage")
        await page.goto(f"/console/w/{WORKSPACE}/billing")
        await shot("billing")
        await page.goto(f"/console/w/{WORKSPACE}/members")
        await page.fill("input[name=email]", "grace@example.com")
        await page.click("text=Create invitation")
        await shot("members")
        await page.goto("/console/account")
        await shot("account")
        await browser.close()
    return shots


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "console"), help="folder for the PNGs")
    parser.add_argument("--chromium", default=os.environ.get("OKM_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="okm-shots-") as folder:
        runner, app, base = await _start(Path(folder))
        try:
            shots = await _shoot(base, app, out, args.chromium)
        finally:
            await runner.cleanup()
    for path in shots:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
