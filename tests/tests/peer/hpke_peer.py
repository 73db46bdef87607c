"""kmsd's HPKE seals, checked by an independent RFC 9180 implementation (pyhpke, pinned in
scripts/peer-requirements.txt). The HPKE `info` of each is rebuilt here from the documented
encodings (docs/attested-release.md, proto/kms/v1/kms.proto), not taken from kmsd's code.

    hpke_peer.py open-release         JSON on stdin -> {"plaintext": hex}
    hpke_peer.py seal-encrypt-input   JSON on stdin -> {"encapsulated_key": hex, "ciphertext": hex}

Byte fields are hex. A seal that does not open makes it exit non-zero with pyhpke's error."""

import hashlib
import json
import struct
import sys

from pyhpke import AEADId, CipherSuite, KDFId, KEMId

SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)


def u32(n):
    return struct.pack(">I", n)


def canonical_context(context):
    """A u32 count, then for each pair in byte order of the keys a u32 length and the key's
    UTF-8 bytes, a u32 length and the value's bytes (big-endian lengths)."""
    pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = u32(len(pairs))
    for k, v in pairs:
        out += u32(len(k)) + k + u32(len(v)) + v
    return out


def request(key, context):
    """SHA-256 of "kms-release-request-v1\\0" || u32 BE length || key as sent || context."""
    k = key.encode()
    return hashlib.sha256(b"kms-release-request-v1\0" + u32(len(k)) + k + canonical_context(context)).digest()


def open_release(m):
    info = (
        b"kms-release-v2\0"
        + m["operation"].encode()
        + b"\0"
        + m["key_id"].encode()
        + b"\0"
        + u32(m["key_version"])
        + m["token_id"].encode()
        + request(m["key_as_sent"], m["context"])
        + bytes.fromhex(m["client_nonce"])
    )
    skr = SUITE.kem.deserialize_private_key(bytes.fromhex(m["private_key"]))
    recipient = SUITE.create_recipient_context(bytes.fromhex(m["encapsulated_key"]), skr, info=info)
    plaintext = recipient.open(bytes.fromhex(m["ciphertext"]), aad=bytes.fromhex(m["blob"]))
    return {"plaintext": plaintext.hex()}


def seal_encrypt_input(m):
    node_key = bytes.fromhex(m["node_hpke_public_key"])
    info = b"kms-encrypt-input-v1\0" + node_key + request(m["key"], m["context"])
    pkr = SUITE.kem.deserialize_public_key(node_key)
    enc, sender = SUITE.create_sender_context(pkr, info=info)
    ciphertext = sender.seal(bytes.fromhex(m["plaintext"]), aad=b"")
    return {"encapsulated_key": enc.hex(), "ciphertext": ciphertext.hex()}


def main():
    commands = {"open-release": open_release, "seal-encrypt-input": seal_encrypt_input}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit("usage: hpke_peer.py open-release|seal-encrypt-input < request.json")
    json.dump(commands[sys.argv[1]](json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
