#!/usr/bin/env python3
"""Cross-implementation vector for the node key's release signature (kms/node/src/message.rs).

The node key (Ed25519, RFC 8032) signs
  "kms-release-sig-v1\\0" || u32 BE len || info || u32 BE len || blob
                          || u32 BE len || encapsulated_key || u32 BE len || ciphertext
where info is the HPKE info of the release (kms/core/src/hpke_seal.rs `release_info`):
  "kms-release-v2\\0" || operation || 0x00 || key_id || 0x00 || key_version (u32 BE) || token_id
  || request (32 bytes) || client_nonce

Written out here with pyca/cryptography, independently of the Rust code; prints the vector that
`kms_node::message::tests::python_release_signature_vector` checks.
"""

import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization


def field(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


SEED = bytes([0x42] * 32)
INFO = (
    b"kms-release-v2\0"
    + b"generate_data_key"
    + b"\0"
    + b"k-00112233445566778899aabbccddeeff"
    + b"\0"
    + struct.pack(">I", 7)
    + b"0123456789abcdef0123456789abcdef"
    + bytes([0x3C] * 32)
    + bytes([0x5D] * 16)
)
BLOB = b"blob: key id, version and encryption context"
ENC = bytes([0x11] * 32)
CT = bytes([0x22] * 48)

message = b"kms-release-sig-v1\0" + field(INFO) + field(BLOB) + field(ENC) + field(CT)
key = Ed25519PrivateKey.from_private_bytes(SEED)
public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
signature = key.sign(message)
key.public_key().verify(signature, message)

print("node public key:", public.hex())
print("message:        ", message.hex())
print("signature:      ", signature.hex())
