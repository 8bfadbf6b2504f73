"""The store: SQLite backend, rows, usage SQL, the usage writer and numbered migrations.

The face other packages import: `Store` and its row types."""

from proxy.store.sqlite import Store

__all__ = ["Store"]
