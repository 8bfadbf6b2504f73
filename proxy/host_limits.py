"""The per-process overload shield, and what it adds up to on a host with several workers.

`limits.max_concurrent_requests` and `limits.max_workspace_share` protect one process's memory and
event loop; they are not a tenant quota (per-workspace RPM and stream limits are, and those hold
across workers and hosts). Each worker enforces them for itself, so a host with N workers admits
up to N times each; `host_total` says so where an operator reads it (check-config, start-up log).
"""

from __future__ import annotations

import math

from proxy.config import Config


def workspace_cap(max_concurrent: int, share: float) -> int:
    """How many requests one workspace may have in flight: its share of the global cap."""
    return max(1, math.ceil(max_concurrent * min(share, 1.0)))


def host_total(config: Config) -> str | None:
    """One line on the host-wide effect of the per-worker caps; None with a single worker."""
    workers, cap = config.workers, config.limits.max_concurrent_requests
    if workers <= 1:
        return None
    share = workspace_cap(cap, config.limits.max_workspace_share)
    return (f"limits apply per worker: {workers} workers × limits.max_concurrent_requests {cap} = up to "
            f"{workers * cap} requests in flight on this host; one workspace up to {share} per worker "
            f"({workers * share} on this host)")
