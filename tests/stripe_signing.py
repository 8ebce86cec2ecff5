"""The `Stripe-Signature` header Stripe sends with a webhook, computed from scratch.

`t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed with the endpoint secret>`. The
code under test verifies it with the real stripe library, so nothing about the check is mocked.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def stripe_signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"
