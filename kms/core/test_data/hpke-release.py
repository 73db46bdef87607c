#!/usr/bin/env python3
"""Cross-implementation vector for the attested release's HPKE seal (kms/core/src/hpke_seal.rs).

RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, with
  info    = "kms-release-v2\\0" || operation || 0x00 || key_id || 0x00 || key_version (u32 BE) || token_id
            || request || client_nonce
  request = SHA-256("kms-release-request-v1\\0" || u32 BE len || key as requested
                    || u32 BE count || for each pair in key order: u32 BE len || key || u32 BE len || value)
  aad     = the ciphertext blob.

pyca/cryptography's HPKE `Suite` (>= 48) has no `aad` argument and picks its own ephemeral key, so
this script writes the RFC 9180 sender out with pyca primitives (fixed ephemeral key, any aad),
checks that writing-out against `Suite` where `Suite` can judge it (empty aad), and prints the
vector that `hpke_seal::tests::python_release_vector` opens.

  python3 hpke-release.py                 print the vector
  python3 hpke-release.py open SK ENC CT INFO AAD   (hex) open a seal made elsewhere, e.g. by Rust
"""

import hashlib
import hmac
import struct
import sys

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEM_SUITE_ID = b"KEM" + struct.pack(">H", 0x0020)
HPKE_SUITE_ID = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0002)


def release_request(key: str, context: dict) -> bytes:
    canonical = struct.pack(">I", len(context))
    for k in sorted(context, key=lambda k: k.encode()):
        canonical += struct.pack(">I", len(k.encode())) + k.encode()
        canonical += struct.pack(">I", len(context[k].encode())) + context[k].encode()
    return hashlib.sha256(
        b"kms-release-request-v1\0" + struct.pack(">I", len(key.encode())) + key.encode() + canonical
    ).digest()


def release_info(operation: str, key_id: str, key_version: int, token_id: str, request: bytes,
                 client_nonce: bytes) -> bytes:
    assert len(request) == 32
    return (
        b"kms-release-v2\0"
        + operation.encode()
        + b"\0"
        + key_id.encode()
        + b"\0"
        + struct.pack(">I", key_version)
        + token_id.encode()
        + request
        + client_nonce
    )


def extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + info, length)


def raw(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def shared_secret(dh: bytes, enc: bytes, pk_r: bytes) -> bytes:
    eae_prk = labeled_extract(KEM_SUITE_ID, b"", b"eae_prk", dh)
    return labeled_expand(KEM_SUITE_ID, eae_prk, b"shared_secret", enc + pk_r, 32)


def key_schedule(secret: bytes, info: bytes):
    psk_id_hash = labeled_extract(HPKE_SUITE_ID, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE_ID, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash  # mode_base
    prk = labeled_extract(HPKE_SUITE_ID, secret, b"secret", b"")
    key = labeled_expand(HPKE_SUITE_ID, prk, b"key", context, 32)
    nonce = labeled_expand(HPKE_SUITE_ID, prk, b"base_nonce", context, 12)
    return key, nonce  # sequence number 0: the nonce is the base nonce


def seal(pk_r: bytes, sk_e_bytes: bytes, info: bytes, aad: bytes, plaintext: bytes):
    sk_e = x25519.X25519PrivateKey.from_private_bytes(sk_e_bytes)
    enc = raw(sk_e.public_key())
    dh = sk_e.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    key, nonce = key_schedule(shared_secret(dh, enc, pk_r), info)
    return enc, AESGCM(key).encrypt(nonce, plaintext, aad)


def open_(sk_r_bytes: bytes, enc: bytes, ct: bytes, info: bytes, aad: bytes) -> bytes:
    sk_r = x25519.X25519PrivateKey.from_private_bytes(sk_r_bytes)
    dh = sk_r.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    key, nonce = key_schedule(shared_secret(dh, enc, raw(sk_r.public_key())), info)
    return AESGCM(key).decrypt(nonce, ct, aad)


def self_check() -> None:
    """The written-out sender and receiver agree with pyca's HPKE (which needs an empty aad)."""
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    sk_r = x25519.X25519PrivateKey.from_private_bytes(bytes(range(32)))
    info = release_info("decrypt", "k-" + "0" * 32, 1, "f" * 32, bytes(32), b"")
    enc, ct = seal(raw(sk_r.public_key()), bytes(range(32, 64)), info, b"", b"self check")
    assert suite.decrypt(enc + ct, sk_r, info=info) == b"self check"
    theirs = suite.encrypt(b"the other way", sk_r.public_key(), info=info)
    assert open_(bytes(range(32)), theirs[:32], theirs[32:], info, b"") == b"the other way"


def main() -> None:
    self_check()
    if len(sys.argv) == 7 and sys.argv[1] == "open":
        sk, enc, ct, info, aad = (bytes.fromhex(a) for a in sys.argv[2:])
        print(open_(sk, enc, ct, info, aad).hex())
        return
    sk_r = bytes.fromhex("a1" * 32)
    sk_e = bytes.fromhex("e2" * 32)
    request = release_request("payroll", {"tenant": "acme", "b": "2", "a": ""})
    info = release_info("generate_data_key", "k-00112233445566778899aabbccddeeff", 7,
                        "0123456789abcdef0123456789abcdef", request, bytes([0x5D] * 16))
    aad = b"blob: key id, version and encryption context"
    plaintext = bytes(range(32))
    pk_r = raw(x25519.X25519PrivateKey.from_private_bytes(sk_r).public_key())
    enc, ct = seal(pk_r, sk_e, info, aad, plaintext)
    assert open_(sk_r, enc, ct, info, aad) == plaintext
    for name, value in [("sk_r", sk_r), ("pk_r", pk_r), ("request", request), ("info", info), ("aad", aad),
                        ("plaintext", plaintext), ("enc", enc), ("ct", ct)]:
        print(f"{name} = {value.hex()}")


if __name__ == "__main__":
    main()
