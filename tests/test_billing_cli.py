"""The billing CLI as an operator runs it (`python -m proxy billing …`, `usage export`, `key create --limit`)
in a subprocess, on a real store; statement totals must equal the export's rows."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.billing.money import format_amount, parse_amount
from proxy.store import Store
from proxy.store.rows import UsageRow

ROOT = Path(__file__).resolve().parents[1]
CONFIG_YAML = """
store: {path: var/okm.sqlite3}
lanes:
  cheap:
    pool:
      - {name: p, type: mock, models: [gpt-5.4]}
billing:
  enabled: true
  currency: EUR
  prices:
    cheap/*: {input: "0.50", cached_input: "0.05", output: "2.00"}
    byok/*: {request: "0.0002"}
"""


@pytest.fixture
def okm(tmp_path: Path) -> Any:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKM_")}
    env.update(OKM_KEY_PEPPER="cli-pepper", PYTHONPATH=str(ROOT))

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "proxy", "--config", str(config), *args], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=60)
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    run.db = tmp_path / "var" / "okm.sqlite3"  # type: ignore[attr-defined]  # reason: test helper carries its path
    return run


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


async def _usage(db: Path, key_id: str, costs: list[int]) -> None:
    store = await Store.open(db)
    try:
        workspace = await store.get_workspace("acme")
        rows = [UsageRow(f"req_{i}", time.time() - 10 + i, workspace.id, key_id, "cheap", "cheap/gpt-5.4", "p",
                         "chat/completions", False, 200, "ok", 100 + i, 10, 110 + i, i % 2 == 1,
                         cached_input_tokens=i, reasoning_tokens=1, cost_micros=cost)
                for i, cost in enumerate(costs)]
        await store.write_usage([], rows)
    finally:
        await store.close()


def test_credit_balance_ledger_budget_mode_prices(okm: Any) -> None:
    okm("workspace", "create", "acme")
    assert "top" in okm("billing", "credit", "acme", "25.50", "--note", "invoice 17").stdout
    entry = _json(okm("billing", "credit", "acme", "-0.500001", "--note", "correction", "--json"))
    assert (entry["kind"], entry["amount"], entry["amount_micros"]) == ("adjustment", "-0.500001", -500_001)
    balance = _json(okm("billing", "balance", "acme", "--json"))
    assert (balance["balance"], balance["balance_micros"], balance["currency"]) == ("24.999999", 24_999_999, "EUR")
    assert (balance["mode"], balance["budget"], balance["held_micros"], balance["holds"]) == ("prepaid", None, 0, 0)
    assert "24.999999 EUR" in okm("billing", "balance", "acme").stdout
    ledger = _json(okm("billing", "ledger", "acme", "--json"))["data"]
    assert [(e["kind"], e["note"]) for e in ledger] == [("topup", "invoice 17"), ("adjustment", "correction")]
    assert ledger[0]["actor"].startswith("cli")
    assert "invoice 17" in okm("billing", "ledger", "acme", "--since", "2020-01-01").stdout
    okm("billing", "budget", "acme", "100")
    okm("billing", "mode", "acme", "postpaid")
    balance = _json(okm("billing", "balance", "acme", "--json"))
    assert (balance["budget"], balance["budget_micros"], balance["mode"]) == ("100.000000", 100_000_000, "postpaid")
    okm("billing", "budget", "acme", "none")
    assert _json(okm("billing", "balance", "acme", "--json"))["budget"] is None
    prices = _json(okm("billing", "prices", "--json"))
    assert prices["enabled"] is True and prices["currency"] == "EUR"
    assert {p["model"]: p["input_micros"] for p in prices["data"]} == {"cheap/*": 500_000, "byok/*": 0}
    assert "cheap/*" in okm("billing", "prices").stdout


@pytest.mark.parametrize(("args", "message"), [
    (("billing", "credit", "acme", "1e3"), "'1e3' is not a decimal amount"),
    (("billing", "credit", "acme", "abc"), "'abc' is not a decimal amount"),
    (("billing", "credit", "acme", "0.0000001"), "'0.0000001' has more than 6 decimal places"),
    (("billing", "credit", "acme", "-5"), "a negative amount needs a note"),
    (("billing", "credit", "acme", "0"), "must not be zero"),
    (("billing", "credit", "nobody", "5"), "workspace 'nobody' does not exist"),
    (("billing", "budget", "acme", "-1"), "must not be negative"),
    (("billing", "statement", "acme", "--month", "2026-13"), "month must be YYYY-MM"),
    (("usage", "export", "acme", "--format", "xml"), "format must be csv or jsonl"),
    (("usage", "export", "acme", "--since", "yesterday"), "since must be a date"),
    (("key", "create", "acme", "--limit", "1e3"), "limit '1e3' is not a decimal amount"),
])
def test_malformed_input_is_one_clear_error(okm: Any, args: tuple[str, ...], message: str) -> None:
    okm("workspace", "create", "acme")
    done = okm(*args, ok=False)
    assert done.returncode != 0 and message in done.stderr and done.stdout == ""


def test_statement_totals_equal_the_export(okm: Any) -> None:
    okm("workspace", "create", "acme")
    created = okm("key", "create", "acme", "--limit", "12.5").stdout
    key_id = created.split("key id:")[1].split()[0]
    assert "spend limit: 12.500000 EUR" in created
    okm("billing", "credit", "acme", "10")
    costs = [1, 999_999, 123_456, 7, 50_000_000]
    asyncio.run(_usage(okm.db, key_id, costs))
    month = time.strftime("%Y-%m", time.gmtime())
    statement = _json(okm("billing", "statement", "acme", "--month", month, "--json"))
    [line] = statement["lines"]
    assert (line["plan"], line["model"], line["requests"]) == ("cheap", "cheap/gpt-5.4", 5)
    assert (line["input_tokens"], line["cached_input_tokens"], line["reasoning_tokens"]) == (510, 10, 5)
    assert statement["charges_micros"] == sum(costs) == line["cost_micros"]
    assert (statement["opening_balance_micros"], statement["credits_micros"]) == (0, 10_000_000)
    assert statement["closing_balance_micros"] == 10_000_000 - sum(costs)
    assert "closing balance" in okm("billing", "statement", "acme", "--month", month).stdout

    exported = okm("usage", "export", "acme").stdout
    table = list(csv.reader(io.StringIO(exported)))
    assert table[0] == ["time", "request_id", "key_id", "model", "lane", "status", "outcome", "input_tokens",
                        "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost", "estimated"]
    assert [r[1] for r in table[1:]] == [f"req_{i}" for i in range(5)]
    assert sum(parse_amount(r[11]) for r in table[1:]) == statement["charges_micros"]
    assert [r[12] for r in table[1:]] == ["false", "true", "false", "true", "false"]
    lines = [json.loads(x) for x in okm("usage", "export", "acme", "--format", "jsonl").stdout.splitlines()]
    assert list(lines[0])[:13] == table[0]
    assert sum(x["cost_micros"] for x in lines) == statement["charges_micros"]
    empty = okm("usage", "export", "acme", "--since", "2000-01-01", "--until", "2000-01-02").stdout
    assert empty.splitlines() == [",".join(table[0])]
    keys = okm("key", "list", "acme").stdout
    assert "12.500000" in keys and format_amount(sum(costs)) in keys
