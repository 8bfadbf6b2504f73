"""Talking to upstreams and relaying their answers: attempts, the client, the mock provider, SSE, streams, drain."""
