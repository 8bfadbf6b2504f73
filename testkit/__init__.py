"""What tests, the benchmark and the tools share to drive the gateway from outside (not shipped).

upstream.py is the one fake OpenAI upstream (payloads.py builds its bytes, profiles.py its
request-chosen answers, raw_upstream.py serves those over raw asyncio for the benchmark);
gateway.py is the one launcher of `python -m proxy serve` and of the other servers they start.
"""
