"""Metrics, live metrics and the access log."""
