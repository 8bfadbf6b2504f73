"""The store's billing SQL on both backends (SQLite and a real PostgreSQL): holds under concurrency,
settlement with the usage batch (idempotent), crash clean-up by owner, the ledger and reports."""

from __future__ import annotations

import asyncio
import calendar
import time

from proxy.billing.holds import decide
from proxy.store import Store
from proxy.store.rows import HoldRequest, UsageRow
from proxy.types import Secret

PEPPER = Secret("pepper")
MONTH = time.strftime("%Y-%m", time.gmtime())


def hold(i: int, key_id: str, amount: int = 100_000, owner: str = "a", limited: bool = False) -> HoldRequest:
    """A hold with its admission row (the hold's record), as a request takes one."""
    admission = UsageRow(f"req-{i}", time.time(), 1, key_id, "cheap", "cheap/m", None, "chat/completions", False, 0,
                         "in_flight", hold_micros=amount, owner=owner)
    return HoldRequest(f"req-{i}", 1, key_id, amount, owner, MONTH, admission, key_limited=limited)


def final(h: HoldRequest, cost: int, started_at: float | None = None) -> UsageRow:
    return UsageRow(h.request_id, started_at or time.time(), h.workspace_id, h.key_id, "cheap", "cheap/m", "up",
                    "chat/completions", False, 200, "ok", 10, 5, 15, cost_micros=cost, hold_micros=h.amount_micros)


async def test_a_balance_for_ten_holds_admits_ten_of_thirty_concurrent(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        await store.create_workspace("acme")
        key, _ = await store.create_api_key("acme", PEPPER)
        await store.add_ledger_entry("acme", 1_050_000, "topup", "first credit", "ops")
        holds = [hold(i, key.id) for i in range(30)]
        # A second store on the same database: two gateways racing for one balance.
        other = await Store.open(store_url)
        try:
            results = await asyncio.gather(*(
                (store if i % 2 else other).take_hold(h, decide(h.amount_micros, "USD", MONTH))
                for i, h in enumerate(holds)))
        finally:
            await other.close()
        admitted = [h for h, refusal in zip(holds, results, strict=True) if refusal is None]
        assert len(admitted) == 10
        refused = [r for r in results if r is not None]
        assert all(r.error.code == "insufficient_quota" for r in refused)
        assert "1.050000 USD" in refused[0].error.message
        account = await store.billing_account("acme")
        assert (account.held_micros, account.credits_micros) == (1_000_000, 1_050_000)
        assert await store.holds_of(1) == (10, 1_000_000)

        rows = [final(h, 60_000) for h in admitted]
        await store.write_usage([], rows)
        await store.write_usage([], rows)  # finished twice: charged and released once
        account = await store.billing_account("acme")
        assert (account.held_micros, account.charges_micros, account.balance_micros) == (0, 600_000, 450_000)
        assert (account.month, account.month_charges_micros) == (MONTH, 600_000)
        assert await store.holds_of(1) == (0, 0)
        assert (await store.get_api_key(key.id)).spent_micros == 600_000
    finally:
        await store.close()


async def test_a_batch_settles_each_row_once_across_months_keys_and_refinishes(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        await store.create_workspace("acme")
        key_a, _ = await store.create_api_key("acme", PEPPER)
        key_b, _ = await store.create_api_key("acme", PEPPER)
        await store.add_ledger_entry("acme", 10_000_000, "topup", "credit", "ops")
        r1, r2, r3 = hold(1, key_a.id), hold(2, key_a.id), hold(3, key_b.id)
        many = [hold(100 + i, key_b.id, amount=1_000) for i in range(300)]  # more than one IN list
        for h in (r1, r2, r3, *many):
            assert await store.take_hold(h, decide(h.amount_micros, "USD", MONTH)) is None
        last_month = time.time() - 40 * 86400
        await store.write_usage([], [final(r2, 20_000), final(r1, 10_000, started_at=last_month),
                                     final(r3, 1_000), final(r3, 30_000)])  # r3 twice in one batch: its last counts
        await store.write_usage([], [final(r2, 25_000), *(final(h, 1) for h in many)])  # r2 re-priced: +5,000
        account = await store.billing_account("acme")
        assert (account.charges_micros, account.held_micros) == (65_300, 0)
        assert (account.month, account.month_charges_micros) == (MONTH, 55_300)  # last month's row not in it
        assert await store.holds_of(1) == (0, 0)
        spent = await store.fetchall("SELECT spent_micros, held_micros FROM api_keys WHERE id IN (?, ?) ORDER BY id = ?",
                                     (key_a.id, key_b.id, key_b.id))
        assert [tuple(int(v) for v in row) for row in spent] == [(35_000, 0), (30_300, 0)]
    finally:
        await store.close()


async def test_budget_ledger_statement_and_export(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        workspace = await store.create_workspace("acme")
        key, _ = await store.create_api_key("acme", PEPPER)
        await store.set_billing_mode("acme", "postpaid")
        await store.set_budget("acme", 150_000)
        h1, h2 = hold(1, key.id), hold(2, key.id)
        assert await store.take_hold(h1, decide(100_000, "USD", MONTH)) is None  # postpaid: no balance needed
        refusal = await store.take_hold(h2, decide(100_000, "USD", MONTH))
        assert refusal is not None and refusal.error.code == "budget_exceeded"
        await store.write_usage([], [final(h1, 70_000)])
        entry = await store.add_ledger_entry("acme", -20_000, "adjustment", "goodwill reversal", "ops")
        assert entry.id > 0 and entry.amount_micros == -20_000
        assert [e.note for e in await store.ledger("acme")] == ["goodwill reversal"]
        now = time.time()
        lines = await store.statement_lines(workspace.id, now - 3600, now + 3600)
        assert [tuple(int(v) if i > 1 else v for i, v in enumerate(line)) for line in lines] == \
            [("cheap", "cheap/m", 1, 10, 0, 5, 0, 70_000)]
        assert await store.balance_before(workspace.id, now + 3600) == (-20_000, 70_000)
        exported = [row async for row in store.export_usage(workspace.id, now - 3600, now + 3600)]
        assert [(r[1], int(r[11])) for r in exported] == [("req-1", 70_000)]
        account = await store.billing_account("acme")
        assert (account.mode, account.budget_micros, account.balance_micros) == ("postpaid", 150_000, -90_000)
    finally:
        await store.close()


async def test_usage_sums_never_overflow(store_url: str) -> None:
    """Rows an older gateway wrote with absurd counts (up to 2**62 each) still add up without an
    integer-overflow error: every row counts at most the per-request cap."""
    store = await Store.open(store_url)
    try:
        workspace = await store.create_workspace("acme")
        async with store.transaction() as tx:
            for i in range(4):
                await tx.execute(
                    "INSERT INTO usage (request_id, started_at, workspace_id, lane, public_model, endpoint, outcome, "
                    "prompt_tokens, completion_tokens, total_tokens) VALUES (?, ?, ?, 'cheap', 'cheap/m', "
                    "'chat/completions', 'ok', ?, ?, ?)", (f"old-{i}", time.time(), workspace.id, 2**62, 2**62, 2**62))
        [total] = await store.usage_summary(workspace="acme")
        assert (total.requests, total.prompt_tokens, total.total_tokens) == (4, 4 * 100_000_000, 4 * 100_000_000)
        now = time.time()
        [line] = await store.statement_lines(workspace.id, now - 60, now + 60)
        assert int(line[3]) == 4 * 100_000_000
    finally:
        await store.close()


async def test_statements_count_rows_retention_rolled_up(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        workspace = await store.create_workspace("acme")
        key, _ = await store.create_api_key("acme", PEPPER)
        old = calendar.timegm((2024, 3, 10, 12, 0, 0))
        await store.write_usage([], [final(hold(1, key.id), 4_000, started_at=old),
                                     final(hold(2, key.id), 6_000, started_at=old)])
        assert await store.sweep_usage(time.time()) == 2  # retention: both rows become usage_daily totals
        march = (calendar.timegm((2024, 3, 1, 0, 0, 0)), calendar.timegm((2024, 4, 1, 0, 0, 0)))
        [line] = await store.statement_lines(workspace.id, *march)
        assert (line[0], line[2], line[7]) == ("cheap", 2, 10_000)
        assert await store.balance_before(workspace.id, march[1]) == (0, 10_000)
        assert await store.balance_before(workspace.id, march[0]) == (0, 0)
    finally:
        await store.close()


async def test_a_taken_hold_commits_its_admission_row_and_a_refused_one_writes_none(store_url: str) -> None:
    """The admission usage row rides in the hold's transaction (one commit per held request), on
    both hold paths (a key with and without a spend limit); a refused hold leaves no row."""
    store = await Store.open(store_url)
    try:
        await store.create_workspace("acme")
        key, _ = await store.create_api_key("acme", PEPPER)
        await store.add_ledger_entry("acme", 250_000, "topup", "first credit", "ops")
        results = {}
        for i, limited in ((1, False), (2, True), (3, False)):  # the third finds the balance taken
            h = hold(i, key.id, limited=limited)
            row = final(h, 0)._replace(outcome="in_flight", status=0, owner="a")
            h = HoldRequest(h.request_id, h.workspace_id, h.key_id, h.amount_micros, h.owner, h.month, row,
                            key_limited=limited)
            results[i] = await store.take_hold(h, decide(h.amount_micros, "USD", MONTH))
        rows = {i: await store.get_usage(f"req-{i}") for i in results}
    finally:
        await store.close()
    assert results[1] is None and results[2] is None and results[3] is not None
    assert rows[1] is not None and rows[1].outcome == "in_flight" and rows[1].hold_micros == 100_000
    assert rows[2] is not None and rows[2].outcome == "in_flight"
    assert rows[3] is None
