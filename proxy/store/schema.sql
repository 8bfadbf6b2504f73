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
