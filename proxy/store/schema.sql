-- Numbered migrations for the gateway's SQLite store, applied in order by proxy/migrations.py.
-- A migration, once released, never changes: add a new numbered block instead.
-- PRAGMA user_version holds the number of the last migration applied.

-- migration 1: workspaces, API keys, BYOK keys, usage
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- Bumped by the triggers below on every change that affects authentication, so a running
-- gateway notices CLI changes with one cheap read a second.
INSERT INTO meta (name, value) VALUES ('auth_version', 0);

CREATE TABLE workspaces (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    disabled_at REAL,
    byok_enabled INTEGER NOT NULL DEFAULT 0 CHECK (byok_enabled IN (0, 1)),
    rpm_limit INTEGER CHECK (rpm_limit IS NULL OR rpm_limit > 0),
    stream_limit INTEGER CHECK (stream_limit IS NULL OR stream_limit > 0)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces (id),
    name TEXT NOT NULL DEFAULT '',
    key_hash BLOB NOT NULL UNIQUE,
    masked TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);
CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id);

CREATE TABLE byok_keys (
    workspace_id INTEGER NOT NULL REFERENCES workspaces (id),
    provider TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (workspace_id, provider)
);

CREATE TABLE usage (
    request_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    workspace_id INTEGER REFERENCES workspaces (id),
    key_id TEXT,
    lane TEXT,
    public_model TEXT,
    upstream TEXT,
    endpoint TEXT NOT NULL,
    stream INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    tokens_estimated INTEGER NOT NULL DEFAULT 0,
    ttfb_s REAL,
    duration_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX usage_by_time ON usage (started_at);
CREATE INDEX usage_by_workspace_time ON usage (workspace_id, started_at);
CREATE INDEX usage_in_flight ON usage (outcome) WHERE outcome = 'in_flight';

CREATE TRIGGER workspaces_insert_auth AFTER INSERT ON workspaces
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;
CREATE TRIGGER workspaces_update_auth
AFTER UPDATE OF name, disabled_at, byok_enabled, rpm_limit, stream_limit ON workspaces
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;
CREATE TRIGGER api_keys_insert_auth AFTER INSERT ON api_keys
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;
CREATE TRIGGER api_keys_update_auth AFTER UPDATE OF workspace_id, key_hash, revoked_at ON api_keys
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;
CREATE TRIGGER api_keys_delete_auth AFTER DELETE ON api_keys
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;
CREATE TRIGGER byok_keys_insert_auth AFTER INSERT ON byok_keys
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;
CREATE TRIGGER byok_keys_update_auth AFTER UPDATE OF ciphertext ON byok_keys
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;
CREATE TRIGGER byok_keys_delete_auth AFTER DELETE ON byok_keys
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;

-- migration 2: billing: token buckets, cost and prices on usage rows; ledger, holds, modes, budgets, key limits
-- Money is integer micro-units (BIGINT). billing_accounts keeps running totals per workspace, updated in the
-- same transaction as the ledger entry or usage row they come from, so admission reads one row.
ALTER TABLE usage ADD COLUMN cached_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN cost_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN price_input BIGINT;
ALTER TABLE usage ADD COLUMN price_cached_input BIGINT;
ALTER TABLE usage ADD COLUMN price_output BIGINT;
ALTER TABLE usage ADD COLUMN price_request BIGINT;
ALTER TABLE usage ADD COLUMN hold_micros BIGINT NOT NULL DEFAULT 0;

ALTER TABLE workspaces ADD COLUMN billing_mode TEXT NOT NULL DEFAULT 'prepaid';
ALTER TABLE workspaces ADD COLUMN budget_micros BIGINT;
ALTER TABLE api_keys ADD COLUMN spend_limit_micros BIGINT;
ALTER TABLE api_keys ADD COLUMN spent_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN held_micros BIGINT NOT NULL DEFAULT 0;

CREATE TABLE billing_accounts (
    workspace_id INTEGER PRIMARY KEY REFERENCES workspaces (id),
    credits_micros BIGINT NOT NULL DEFAULT 0,
    charges_micros BIGINT NOT NULL DEFAULT 0,
    held_micros BIGINT NOT NULL DEFAULT 0,
    month TEXT NOT NULL DEFAULT '',
    month_charges_micros BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE billing_ledger (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces (id),
    amount_micros BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('topup', 'refund', 'adjustment')),
    note TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE INDEX billing_ledger_by_workspace ON billing_ledger (workspace_id, created_at);

CREATE TABLE billing_holds (
    request_id TEXT PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces (id),
    key_id TEXT,
    amount_micros BIGINT NOT NULL,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX billing_holds_by_owner ON billing_holds (owner);

CREATE TRIGGER workspaces_update_billing_auth AFTER UPDATE OF billing_mode, budget_micros ON workspaces
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;
CREATE TRIGGER api_keys_update_limit_auth AFTER UPDATE OF spend_limit_micros ON api_keys
BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'auth_version';
END;

-- migration 3: console accounts: users, memberships, sessions, one-time links, login failures, BYOK access requests
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    disabled_at REAL,
    current_workspace_id INTEGER REFERENCES workspaces (id)
);

CREATE TABLE memberships (
    user_id INTEGER NOT NULL REFERENCES users (id),
    workspace_id INTEGER NOT NULL REFERENCES workspaces (id),
    role TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    created_at REAL NOT NULL,
    PRIMARY KEY (user_id, workspace_id)
);
CREATE INDEX memberships_by_workspace ON memberships (workspace_id);

-- Only a SHA-256 of each session token is kept; expiry is judged from the two times.
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    user_id INTEGER NOT NULL REFERENCES users (id),
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    user_agent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- One-time invitation and password-reset links (hashed token, 7-day expiry, single use).
CREATE TABLE account_links (
    token_hash BLOB PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('invite', 'reset')),
    email TEXT NOT NULL,
    workspace_id INTEGER REFERENCES workspaces (id),
    role TEXT CHECK (role IS NULL OR role IN ('owner', 'member')),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL
);

CREATE TABLE login_failures (
    subject TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE INDEX login_failures_by_subject ON login_failures (subject, failed_at);

CREATE TABLE byok_access_requests (
    workspace_id INTEGER PRIMARY KEY REFERENCES workspaces (id),
    requested_at REAL NOT NULL,
    requested_by INTEGER REFERENCES users (id)
);

ALTER TABLE byok_keys ADD COLUMN last4 TEXT;

CREATE INDEX usage_by_workspace_key ON usage (workspace_id, key_id);

-- migration 4: usage_daily: per-day totals of the usage rows store.usage_retention_days removes
-- Written in the same transaction that deletes those rows, so every request is counted exactly once.
CREATE TABLE usage_daily (
    day TEXT NOT NULL,
    workspace_id BIGINT NOT NULL,
    lane TEXT NOT NULL,
    public_model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    cached_input_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, workspace_id, lane, public_model, outcome)
);

-- migration 5: billing: the hold check as one conditional update (last_hold names the hold it admitted)
ALTER TABLE billing_accounts ADD COLUMN last_hold TEXT;

-- migration 6: shared limits: per-workspace request buckets and stream leases, held across workers and hosts
CREATE TABLE rate_buckets (
    workspace_id INTEGER PRIMARY KEY REFERENCES workspaces (id),
    tokens REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE stream_leases (
    id TEXT PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces (id),
    expires_at REAL NOT NULL
);
CREATE INDEX stream_leases_by_workspace ON stream_leases (workspace_id, expires_at);

-- migration 7: pool account cool-downs (429 Retry-After) shared by every worker and host
CREATE TABLE pool_cooldowns (
    account TEXT PRIMARY KEY,
    cooling_until REAL NOT NULL
);

-- migration 8: pool account health shared by every worker and host: ejections (5xx, timeouts), 401/403 disabling, cool-downs
CREATE TABLE pool_health (
    account TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    ejected_until REAL NOT NULL,
    eject_reason TEXT,
    disabled_at REAL,
    cooling_until REAL NOT NULL
);
INSERT INTO pool_health (account, failures, ejected_until, eject_reason, disabled_at, cooling_until)
    SELECT account, 0, 0, NULL, NULL, cooling_until FROM pool_cooldowns;
DROP TABLE pool_cooldowns;

-- migration 9: gateway instances: each process's lease; in-flight usage rows name the instance that owns them
-- (billing_holds.owner names it too). A process marks `interrupted` only rows of dead instances (proxy/store/instances.py).
CREATE TABLE gateway_instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    started_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX gateway_instances_by_host ON gateway_instances (host);
ALTER TABLE usage ADD COLUMN owner TEXT;
