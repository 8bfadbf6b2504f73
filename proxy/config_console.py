"""The `console:` block of the config (SPEC §9), validated like the rest: every error names its field."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.billing.money import AmountError, parse_amount
from proxy.config_reader import Reader

SIGNUP_MODES = ("open", "invite", "closed")


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The workspace console under /console/ (SPEC §9); off unless enabled."""

    enabled: bool = False
    signup: str = "invite"  # open | invite | closed
    secure_cookies: str = "auto"  # auto (Secure when the request came over HTTPS) | always | never
    session_idle_minutes: int = 60
    session_max_hours: int = 168
    topup_text: str = ""
    public_url: str | None = None  # e.g. https://onekeymodels.com: quickstart base URL and CLI links
    client_ip_header: str | None = None  # behind a proxy: the header naming the client (e.g. X-Real-IP)
    signup_credit_micros: int = 0  # a top-up for each workspace created by open sign-up (billing on)



CONSOLE_OFF = ConsoleConfig()  # frozen, so one shared default is safe


def read_console(r: Reader) -> ConsoleConfig:
    secure = r.data.get("secure_cookies", "auto")
    r.seen.add("secure_cookies")
    if isinstance(secure, bool):
        secure = "always" if secure else "never"
    if secure not in ("auto", "always", "never"):
        r.fail("secure_cookies", f"must be auto, true or false, got '{secure}'")
    console = ConsoleConfig(
        enabled=r.boolean("enabled", default=False),
        signup=r.choice("signup", SIGNUP_MODES, default="invite"),
        secure_cookies=secure,
        session_idle_minutes=r.integer("session_idle_minutes", default=60, minimum=1),
        session_max_hours=r.integer("session_max_hours", default=168, minimum=1),
        topup_text=r.string("topup_text") if r.has("topup_text") else "",
        public_url=r.url("public_url") if r.has("public_url") else None,
        client_ip_header=r.string("client_ip_header") if r.has("client_ip_header") else None,
        signup_credit_micros=_signup_credit(r),
    )
    r.reject_unknown()
    return console


def _signup_credit(r: Reader) -> int:
    if not r.has("signup_credit"):
        return 0
    try:
        return parse_amount(r.string("signup_credit"), what="amount", negative=False)
    except AmountError as exc:
        r.fail("signup_credit", str(exc))
