"""Billing: money parsing, the price book, per-request cost, holds, the ledger, budgets and statements."""
