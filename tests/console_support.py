"""Helpers for the console tests: a cookie-keeping HTTP client that fills in CSRF tokens, and
the console config the tests run with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.conftest import Gateway, GatewayFactory

PASSWORD = "correct horse battery"
CONSOLE = {"enabled": True, "signup": "open"}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Page:
    status: int
    url: str
    headers: Any
    text: str

    @property
    def csrf(self) -> str:
        match = _CSRF.search(self.text)
        assert match, f"no CSRF token on {self.url}"
        return match.group(1)


class ConsoleClient:
    """One browser-like visitor: its own cookie jar; POSTs carry the last page's CSRF token."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             timeout=aiohttp.ClientTimeout(total=15))
        self.last: Page | None = None

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **kwargs: Any) -> Page:
        async with self.session.get(self.gw.url + path, **kwargs) as resp:
            self.last = Page(resp.status, str(resp.url), resp.headers, await resp.text())
        return self.last

    async def post(self, path: str, data: dict[str, str], *, csrf: str | None = None, redirects: bool = True,
                   **kwargs: Any) -> Page:
        body = dict(data)
        if csrf is None and "csrf" not in body:
            if self.last is None or not _CSRF.search(self.last.text):  # a page without a form: take any page's
                await self.get("/console/login")
            assert self.last is not None
            body["csrf"] = self.last.csrf
        elif csrf:
            body["csrf"] = csrf
        async with self.session.post(self.gw.url + path, data=body, allow_redirects=redirects, **kwargs) as resp:
            self.last = Page(resp.status, str(resp.url), resp.headers, await resp.text())
        return self.last

    def cookie(self, name: str) -> str | None:
        for cookie in self.session.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None

    async def signup(self, email: str, workspace: str, password: str = PASSWORD) -> Page:
        await self.get("/console/signup")
        return await self.post("/console/signup", {"email": email, "password": password, "workspace": workspace})

    async def login(self, email: str, password: str = PASSWORD) -> Page:
        await self.get("/console/login")
        return await self.post("/console/login", {"email": email, "password": password})


BILLING = {"enabled": True, "prices": {"cheap/*": {"input": "1.00", "output": "2.00"},
                                       "resale/*": {"input": "2.00", "output": "8.00"},
                                       "byok/*": {"request": "0.0002"}}}


async def console_gateway(gateway: GatewayFactory, *, billing: bool = False, **console: Any) -> Gateway:
    """A test gateway with the console on (open sign-up unless `signup=` says otherwise); with
    `billing=True` requests are priced and each sign-up gets a 5.00 credit."""
    if billing:
        console.setdefault("signup_credit", "5.00")
        return await gateway(billing=BILLING, extra={"console": {**CONSOLE, **console}})
    return await gateway(extra={"console": {**CONSOLE, **console}})
