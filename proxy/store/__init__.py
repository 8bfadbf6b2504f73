"""The store: a backend-neutral `Store` over a database facade (SQLite or PostgreSQL).

The face other packages import: `Store`, its URL type and its row types live in
proxy.store.store, proxy.store_url and proxy.store.rows.
"""

from proxy.store.store import Store
from proxy.store_url import StoreUrl

__all__ = ["Store", "StoreUrl"]
