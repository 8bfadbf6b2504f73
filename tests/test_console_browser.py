"""The console in a real browser: the new customer's journey end to end, BYOK, members."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.browser_support import browser  # noqa: F401  # reason: pytest fixture
from tests.conftest import MODEL
from tests.console_support import PASSWORD, console_gateway


async def _new_page(chromium, gw):
    context = await chromium.new_context(base_url=gw.url, permissions=["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    alerts: list[str] = []
    page.on("dialog", lambda dialog: alerts.append(dialog.message))
    return context, page, alerts


async def _sign_up(page, email: str, workspace: str) -> None:
    await page.goto("/console/signup")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.fill("input[name=workspace]", workspace)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"**/console/w/{workspace}/")


async def _reload_until(page, selector: str, text: str, within_s: float = 5.0) -> str:
    deadline = time.monotonic() + within_s
    while True:
        content = await page.inner_text(selector)
        if text in content or time.monotonic() > deadline:
            return content
        await asyncio.sleep(0.2)
        await page.reload()


async def test_new_customer_journey(gateway, browser):  # noqa: F811  # reason: the fixture imported above
    gw = await console_gateway(gateway)
    context, page, alerts = await _new_page(browser, gw)
    await _sign_up(page, "founder@example.com", "startup")
    assert "Waiting for your first request" in await page.inner_text("#first-request")
    assert gw.url + "/v1" == (await page.inner_text("#base-url")).strip()

    await page.click("nav.tabs >> text=API keys")
    await page.fill("input[name=name]", "<script>alert(1)</script>")
    await page.click("text=Create key")
    await page.click("button[data-copy=new-key]")
    key = await page.evaluate("navigator.clipboard.readText()")
    assert key.startswith("okm_") and key == (await page.inner_text("#new-key")).strip()
    assert "<script>alert(1)</script>" in await page.inner_text("#keys")  # shown as text, never run

    sdk = openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)
    try:
        reply = await sdk.chat.completions.create(model=f"cheap/{MODEL}", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        await page.click("nav.tabs >> text=Overview")
        assert "First request received" in await _reload_until(page, "#first-request", "First request received")

        await page.click("nav.tabs >> text=API keys")
        await page.click("button.danger")
        await page.wait_for_selector("tr.revoked")
        revoked_at = time.monotonic()
        while True:
            try:
                await sdk.chat.completions.create(model=f"cheap/{MODEL}", messages=[{"role": "user", "content": "hi"}])
            except openai.AuthenticationError:
                break
            assert time.monotonic() - revoked_at < 5, "a revoked key still worked after 5 s"
            await asyncio.sleep(0.1)
    finally:
        await sdk.close()
    assert alerts == []
    await context.close()


@pytest.mark.parametrize("javascript", [False])
async def test_the_console_works_without_javascript(gateway, browser, javascript):  # noqa: F811  # reason: fixture
    gw = await console_gateway(gateway)
    context = await browser.new_context(base_url=gw.url, java_script_enabled=javascript)
    page = await context.new_page()
    await _sign_up(page, "nojs@example.com", "plain")
    await page.click("nav.tabs >> text=API keys")
    await page.click("text=Create key")
    assert (await page.inner_text("#new-key")).startswith("okm_")
    assert not await page.is_visible("button[data-copy=new-key]")  # the copy button needs JavaScript
    await context.close()
