"""The gateway's benchmark: a fake upstream, a bare relay, load generators and the driver (`scripts/bench`).

Loopback only; nothing here is imported by the gateway itself.
"""
