"""Typed keys for everything the application holds; no module keeps state of its own."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# The values are set in app.build_app / cleanup contexts. `Any` keeps this module free of
# import cycles; each owner module documents the concrete type it stores.
STORE: web.AppKey[Any] = web.AppKey("store", object)  # store.Store
AUTH: web.AppKey[Any] = web.AppKey("auth", object)  # auth.Authenticator
USAGE: web.AppKey[Any] = web.AppKey("usage", object)  # usage.UsageRecorder
UPSTREAM: web.AppKey[Any] = web.AppKey("upstream", object)  # upstream.UpstreamClient
METRICS: web.AppKey[Any] = web.AppKey("metrics", object)  # metrics.Metrics
STATE: web.AppKey[Any] = web.AppKey("state", object)  # app.State: current Runtime (swapped on reload), ready, draining
ACCESS_LOG: web.AppKey[Any] = web.AppKey("access_log", object)  # accesslog.AccessLog
BYOK: web.AppKey[Any] = web.AppKey("byok", object)  # byok.ByokVault
