"""Signatures per the Standard Webhooks specification (standardwebhooks.com): a receiver checks
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``, keyed with
the base64-decoded secret after ``whsec_``) and the ``webhook-timestamp`` (replays)."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets

PREFIX = "whsec_"
KEY_BYTES = 32  # the specification asks for 24 to 64


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def key_of(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret. Raises ValueError when it is no such secret."""
    if not secret.startswith(PREFIX):
        raise ValueError(f"a secret starts with {PREFIX}")
    try:
        key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError("a secret is whsec_ and base64") from exc
    if not 24 <= len(key) <= 64:
        raise ValueError("a secret's key is 24 to 64 bytes (base64 after whsec_)")
    return key


def headers(secret: str, id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed delivery."""
    signed = f"{id}.{timestamp}.".encode() + body
    digest = hmac.digest(key_of(secret), signed, "sha256")
    return {
        "webhook-id": id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
