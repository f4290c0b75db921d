"""EnableX webhook encryption: Node's `crypto.createCipher(alg, APP_ID)`, exactly.

Key and IV come from OpenSSL's `EVP_BytesToKey` (MD5, one iteration, no salt) over the
APP_ID; the cipher is AES-CBC with PKCS#7 padding; the ciphertext is sent as base64, hex
or latin1 text. See ../shared/enablex-voice-api.md §4.1. This authenticates nothing: the
ingester adds its own checks (path token, known voice ids, size limits).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from campaigns.errors import WebhookDecodeError

# OpenSSL cipher names EnableX may send, with their key length in bytes.
CIPHER_KEY_BYTES: dict[str, int] = {
    "aes256": 32,
    "aes-256-cbc": 32,
    "aes192": 24,
    "aes-192-cbc": 24,
    "aes128": 16,
    "aes-128-cbc": 16,
}
ALGORITHM_HEADERS = ("x-algoritm", "x-algorithm")  # the samples' spelling, then the docs'
FORMATS = ("base64", "hex", "latin1")


@lru_cache(maxsize=64)
def derive_key_iv(app_id: str, key_bytes: int = 32) -> tuple[bytes, bytes]:
    """OpenSSL EVP_BytesToKey with MD5, one iteration, no salt."""
    password = app_id.encode("utf-8")
    out = b""
    block = b""
    while len(out) < key_bytes + 16:
        block = hashlib.md5(block + password).digest()
        out += block
    return out[:key_bytes], out[key_bytes : key_bytes + 16]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _key_length(algorithm: str) -> int:
    key_bytes = CIPHER_KEY_BYTES.get(algorithm.strip().lower())
    if key_bytes is None:
        raise WebhookDecodeError(f"unsupported cipher {algorithm!r} in x-algoritm header")
    return key_bytes


def encrypt_payload(
    event: Mapping[str, Any], app_id: str, *, algorithm: str = "aes256", fmt: str = "base64"
) -> tuple[dict[str, str], bytes]:
    """Encrypt an event as EnableX does; returns (headers, JSON body bytes)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    key, iv = derive_key_iv(app_id, _key_length(algorithm))
    padder = padding.PKCS7(128).padder()
    plain = json.dumps(event, separators=(",", ":")).encode("utf-8")
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    cipher = encryptor.update(padded) + encryptor.finalize()
    if fmt == "base64":
        text = base64.b64encode(cipher).decode("ascii")
    elif fmt == "hex":
        text = cipher.hex()
    else:
        text = cipher.decode("latin-1")
    headers = {"x-algoritm": algorithm, "x-format": fmt, "x-encoding": "utf8"}
    body = json.dumps({"encrypted_data": text}).encode("utf-8")
    return headers, body


def _decode_cipher_text(text: str, fmt: str) -> bytes:
    try:
        if fmt == "base64":
            return base64.b64decode(text, validate=True)
        if fmt == "hex":
            return bytes.fromhex(text)
        if fmt == "latin1":
            return text.encode("latin-1")
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise WebhookDecodeError(f"encrypted_data is not valid {fmt}") from exc
    raise WebhookDecodeError(f"unsupported x-format {fmt!r}; expected one of {', '.join(FORMATS)}")


def decrypt_payload(headers: Mapping[str, str], body: bytes, app_id: str) -> dict[str, Any]:
    """Decode one webhook delivery into its event object.

    Without an x-algoritm/x-algorithm header the body is taken as the plain event JSON (the
    caller decides whether plaintext is acceptable). Every failure is a WebhookDecodeError.
    """
    try:
        outer = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookDecodeError("body is not JSON") from exc
    if not isinstance(outer, dict):
        raise WebhookDecodeError("body is not a JSON object")
    algorithm = next(
        (v for v in (_header(headers, h) for h in ALGORITHM_HEADERS) if v is not None), None
    )
    if algorithm is None:
        return outer
    text = outer.get("encrypted_data")
    if not isinstance(text, str) or not text:
        raise WebhookDecodeError("encrypted delivery has no encrypted_data string")
    fmt = (_header(headers, "x-format") or "base64").strip().lower()
    encoding = (_header(headers, "x-encoding") or "utf8").strip().lower().replace("-", "")
    if encoding not in {"utf8"}:
        raise WebhookDecodeError(f"unsupported x-encoding {encoding!r}; expected utf8")
    cipher = _decode_cipher_text(text, fmt)
    if not cipher or len(cipher) % 16:
        raise WebhookDecodeError("ciphertext length is not a multiple of the AES block size")
    key, iv = derive_key_iv(app_id, _key_length(algorithm))
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(cipher) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise WebhookDecodeError("bad padding: wrong APP_ID or corrupted ciphertext") from exc
    try:
        event = json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookDecodeError("decrypted payload is not UTF-8 JSON (wrong APP_ID?)") from exc
    if not isinstance(event, dict):
        raise WebhookDecodeError("decrypted payload is not a JSON object")
    return event
