# Independent computation of the blob test vector with pyca/cryptography (not our Rust code).
import json, struct
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

kek = bytes(range(32))
key_id = bytes.fromhex("0123456789abcdef0123456789abcdef")
version = 3
salt = bytes([0xa5]) * 32
plaintext = b"The quick brown fox jumps over the lazy dog"
context = {"tenant": "acme", "purpose": "test-vector"}

header = b"KMSB" + bytes([1]) + key_id + struct.pack(">I", version) + salt
okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=salt, info=b"kms-blob-v1\0" + key_id + struct.pack(">I", version)).derive(kek)
def lp(b): return struct.pack(">I", len(b)) + b
ctx = struct.pack(">I", len(context)) + b"".join(lp(k.encode()) + lp(v.encode()) for k, v in sorted(context.items(), key=lambda kv: kv[0].encode()))
ct = AESGCM(okm[:32]).encrypt(okm[32:], plaintext, header + ctx)
print(json.dumps({
  "description": "kms blob format v1; computed independently with pyca/cryptography (HKDF-SHA256, AES-256-GCM)",
  "kek": kek.hex(), "key_id": "k-" + key_id.hex(), "key_version": version, "salt": salt.hex(),
  "encryption_context": context, "plaintext": plaintext.hex(),
  "canonical_context": ctx.hex(), "blob_key": okm[:32].hex(), "blob_nonce": okm[32:].hex(),
  "blob": (header + ct).hex()}, indent=2))
