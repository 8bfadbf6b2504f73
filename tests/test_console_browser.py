"""The console in a real browser: the new customer's journey end to end, BYOK, members."""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

import openai
import pytest

from proxy import appkeys
from proxy.console.usage_page import CSV_COLUMNS
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
    gw = await console_gateway(gateway, billing=True)
    context, page, alerts = await _new_page(browser, gw)
    await _sign_up(page, "founder@example.com", "startup")
    assert "Waiting for your first request" in await page.inner_text("#first-request")
    assert (await page.inner_text("#balance")).strip() == "5.000000 USD"  # the sign-up credit
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

        await page.click("nav.tabs >> text=Usage")
        latest = await _reload_until(page, "main", f"cheap/{MODEL}")
        assert f"cheap/{MODEL}" in latest
        row = (await gw.usage_rows(1))[-1]
        cost = (await gw.app[appkeys.STORE].fetchall("SELECT cost_micros FROM usage WHERE request_id = ?",
                                                    (row["request_id"],)))[0][0]
        assert cost > 0 and row["request_id"] in latest
        shown = f"0.{cost:06d}" if cost < 1_000_000 else None
        assert shown and shown in await page.inner_text("#latest")
        async with page.expect_download() as download_info:
            await page.click("#csv-link")
        download = await download_info.value
        lines = Path(await download.path()).read_text().splitlines()
        assert lines[0] == ",".join(CSV_COLUMNS)
        record = dict(zip(CSV_COLUMNS, next(csv.reader([lines[-1]])), strict=True))
        assert record["request_id"] == row["request_id"] and record["model"] == f"cheap/{MODEL}"
        assert record["status"] == "200" and int(record["input_tokens"]) == row["prompt_tokens"]
        assert record["cost"] == shown and record["estimated"] in ("true", "false")

        await page.click("nav.tabs >> text=Billing")
        assert f"4.{1_000_000 - cost:06d} USD" in await page.inner_text("#balance")  # 5.00 minus the request
        assert shown in await page.inner_text("#month-spend")
        assert f"cheap/{MODEL}" in await page.inner_text("#statement")
        assert "sign-up credit" in await page.inner_text("#ledger")

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


async def test_byok_request_access_then_set_replace_remove(gateway, browser):  # noqa: F811  # reason: fixture
    gw = await console_gateway(gateway)
    context, page, _ = await _new_page(browser, gw)
    await _sign_up(page, "owner@example.com", "byoker")
    await page.click("nav.tabs >> text=BYOK")
    assert "Limited rollout" in await page.inner_text("#byok-rollout")
    await page.click("text=Request access")
    assert "Access requested" in await page.inner_text("#byok-rollout")
    async with gw.session.get(gw.url + "/admin/workspaces", headers={"Authorization": "Bearer admin-test-token"}) as r:
        listed = {w["name"]: w for w in (await r.json())["data"]}
    assert listed["byoker"]["byok_requested_at"] and not listed["byoker"]["byok_enabled"]

    await gw.app[appkeys.STORE].set_byok_enabled("byoker", True)  # the operator enables it
    await page.reload()
    secret, replacement = "sk-tenant-first-secret-1111", "sk-tenant-second-secret-2222"
    await page.fill("#byok-openai input[name=key]", secret)
    await page.click("#byok-openai button:has-text('Save')")
    assert "…1111" in await page.inner_text("#byok-openai .hint")
    await page.fill("#byok-openai input[name=key]", replacement)
    await page.click("#byok-openai button:has-text('Replace')")
    assert "…2222" in await page.inner_text("#byok-openai .hint")
    for path in ("byok", "", "keys", "usage", "members"):
        html = await (await page.goto(f"/console/w/byoker/{path}")).text()
        assert secret not in html and replacement not in html and "tenant-second" not in html

    _, key = await gw.app[appkeys.STORE].create_api_key("byoker", gw.config.key_pepper)
    sdk = openai.AsyncOpenAI(base_url=gw.base_url, api_key=key.reveal(), max_retries=0, timeout=10)
    try:
        await sdk.chat.completions.create(model=f"byok/openai/{MODEL}", messages=[{"role": "user", "content": "hi"}])
        assert gw.byok["openai"].requests[-1].headers["Authorization"] == f"Bearer {replacement}"
        await page.goto("/console/w/byoker/byok")
        await page.click("#byok-openai button:has-text('Remove')")
        assert "not set" in await page.inner_text("#byok-openai .hint")
        deadline = time.monotonic() + 5
        while True:
            try:
                await sdk.chat.completions.create(model=f"byok/openai/{MODEL}", messages=[{"role": "user", "content": "x"}])
            except openai.BadRequestError as exc:
                assert exc.code == "byok_key_not_configured"
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        await sdk.close()
    await context.close()


async def test_members_invite_accepted_in_a_second_browser(gateway, browser):  # noqa: F811  # reason: fixture
    gw = await console_gateway(gateway)
    owner_ctx, owner, _ = await _new_page(browser, gw)
    await _sign_up(owner, "owner@example.com", "team")
    await owner.click("nav.tabs >> text=Members")
    await owner.fill("input[name=email]", "Colleague@Example.com")
    await owner.click("text=Create invitation")
    link = (await owner.inner_text("#invite-link")).strip()
    assert "/console/invite/" in link

    guest_ctx, guest, _ = await _new_page(browser, gw)
    await guest.goto(link)
    assert "colleague@example.com" in await guest.inner_text("main")
    await guest.fill("input[name=password]", PASSWORD)
    await guest.click("text=Create account and join")
    await guest.wait_for_url("**/console/w/team/")
    await guest.click("nav.tabs >> text=Members")
    assert "Create invitation" not in await guest.inner_text("main")  # members do not manage members

    await owner.reload()
    assert "colleague@example.com" in await owner.inner_text("#members")
    await owner.click("#members tr:has-text('colleague') button:has-text('Make owner')")
    assert "owner" in await owner.inner_text("#members tr:has-text('colleague')")
    await owner.click("#members tr:has-text('colleague') button:has-text('Remove')")
    assert "colleague" not in await owner.inner_text("#members")
    response = await guest.goto("/console/w/team/")
    assert response.status == 404  # no longer a member
    again = await guest.goto(link)
    assert again.status == 404  # the link worked once
    await owner_ctx.close()
    await guest_ctx.close()
