"""The webhook cipher against the spec's Node-produced test vector, and its failure modes."""

from __future__ import annotations

import json

import pytest

from campaigns.enablex.crypto import decrypt_payload, derive_key_iv, encrypt_payload
from campaigns.errors import WebhookDecodeError

APP_ID = "5f1e99bf90ce3c3ccsc52e6462"
PLAINTEXT = (
    '{"broadcast_id":"74a2c2c2-4d55-4b0d-a9f6-8ec09f3bcc35","voice_id":"bc273d94-cb59-4f66-8eba-'
    'e1f96a7e482e","state":"connected","from":"12028528186","to":"918088394833","timestamp":'
    '"2023-02-01T10:52:10.000Z"}'
)
CIPHER_B64 = (
    "zmBoizYbvOA4PKkriZv+w6NvqZ8oB0vwZanf6wQC7jRuOvHmcqcSVA8YtPE+/yVTmyEUzQMS6X7D3BuO+l0DIlSJC7Eb"
    "3dbHAIQYCFuKl1VW7sy9oKN4FTVTBlaKJtbK4eHO2uRzq09sMS/urn+HvRHW6RufLTQTtAQJ4XyJydTxtvY/agyC+kN6"
    "ToekHwXgmrlb2edbQoU23gmoa331bkTHzULq08I9QGkipIOKf0LxGbferGdNTHH/BJqP2WYU+eGgoAzp/32qJpnv9+wmzw=="
)
HEADERS = {"x-algoritm": "aes256", "x-format": "base64", "x-encoding": "utf8"}


def test_key_and_iv_match_the_spec_vector() -> None:
    key, iv = derive_key_iv(APP_ID)
    assert key.hex() == "e3cfa7affb2c9be33596802fccc06e495c2ebd70e77250c32774baa44ed54526"
    assert iv.hex() == "7baed10b64cf40ec0a592aad344486a8"


def test_spec_vector_decrypts() -> None:
    body = json.dumps({"encrypted_data": CIPHER_B64}).encode()
    assert decrypt_payload(HEADERS, body, APP_ID) == json.loads(PLAINTEXT)


def test_encrypt_reproduces_the_spec_ciphertext() -> None:
    headers, body = encrypt_payload(json.loads(PLAINTEXT), APP_ID)
    assert headers["x-algoritm"] == "aes256"
    assert json.loads(body)["encrypted_data"] == CIPHER_B64


@pytest.mark.parametrize(
    "algorithm", ["aes256", "aes-256-cbc", "aes192", "aes-192-cbc", "aes128", "aes-128-cbc"]
)
@pytest.mark.parametrize("fmt", ["base64", "hex", "latin1"])
def test_round_trip_every_cipher_and_format(algorithm: str, fmt: str) -> None:
    event = {"voice_id": "v1", "playstate": "digitcollected", "digit": "3", "text": "héllo ✓"}
    headers, body = encrypt_payload(event, "app-123", algorithm=algorithm, fmt=fmt)
    assert decrypt_payload(headers, body, "app-123") == event


def test_docs_header_spelling_and_case_are_accepted() -> None:
    headers, body = encrypt_payload({"state": "ringing"}, APP_ID)
    spelled = {"X-Algorithm": headers["x-algoritm"], "X-Format": "base64", "X-Encoding": "utf8"}
    assert decrypt_payload(spelled, body, APP_ID) == {"state": "ringing"}


def test_plaintext_delivery_is_passed_through() -> None:
    assert decrypt_payload({}, b'{"state":"ringing"}', APP_ID) == {"state": "ringing"}


def _encrypted(text: str, **headers: str) -> tuple[dict[str, str], bytes]:
    return {**HEADERS, **headers}, json.dumps({"encrypted_data": text}).encode()


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        (HEADERS, json.dumps({"encrypted_data": CIPHER_B64}).encode(), "wrong APP_ID"),
        (*_encrypted(CIPHER_B64, **{"x-algoritm": "des"}), "unsupported cipher"),
        (*_encrypted("!!not*base64!!"), "base64"),
        (*_encrypted(CIPHER_B64[:40]), "block size"),
        (*_encrypted("zz", **{"x-format": "hex"}), "hex"),
        (*_encrypted(CIPHER_B64, **{"x-format": "base32"}), "x-format"),
        (HEADERS, b"\x00\xff junk", "not JSON"),
        (HEADERS, b"[1, 2]", "not a JSON object"),
        (HEADERS, b'{"other": 1}', "no encrypted_data"),
    ],
)
def test_bad_deliveries_raise_a_decode_error(
    headers: dict[str, str], body: bytes, reason: str
) -> None:
    app_id = "not-the-app-id" if reason == "wrong APP_ID" else APP_ID
    with pytest.raises(WebhookDecodeError) as info:
        decrypt_payload(headers, body, app_id)
    assert reason.split()[0].lower() in str(info.value).lower() or reason == "wrong APP_ID"


def test_ciphertext_of_non_json_plaintext_is_refused() -> None:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv = derive_key_iv(APP_ID)
    padder = padding.PKCS7(128).padder()
    data = padder.update(b"not json at all") + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    import base64

    text = base64.b64encode(enc.update(data) + enc.finalize()).decode()
    with pytest.raises(WebhookDecodeError, match="not UTF-8 JSON"):
        decrypt_payload(*_encrypted(text), APP_ID)
