#!/usr/bin/env python3
"""Interop peer for the envelope library, built on the official AWS Encryption SDK for Python.

The envelope crate writes and reads the AWS Encryption SDK (ESDK) message format. To check that
it really interoperates, the Rust tests and the bench drive this small command-line program,
which uses the Python ESDK from PyPI (pinned in scripts/peer-requirements.txt, installed into a
venv by scripts/peer-venv; run this file with the interpreter that script prints).

The wrapping key is a raw AES-256-GCM key (the ESDK's legacy RawMasterKey with
WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING): its provider id is --namespace and its key
id is --key-name (UTF-8), so messages are compatible with a Raw AES keyring of that namespace
and name. The commitment policy is REQUIRE_ENCRYPT_REQUIRE_DECRYPT, so only the committing
suites are written and read: 0x0478 (AES-256-GCM, HKDF-SHA512, key commitment) and 0x0578 (the
same plus an ECDSA P-384 signature, whose public key the ESDK adds to the encryption context as
"aws-crypto-public-key").

Subcommands:
  encrypt --key-hex HEX64 --namespace NS --key-name NAME --suite 0x0478|0x0578
          --frame-length N [--context K=V ...] --in FILE --out FILE
  decrypt --key-hex HEX64 --namespace NS --key-name NAME [--context K=V ...]
          [--max-encrypted-data-keys N] [--print-header] --in FILE --out FILE
  bench   --bytes N --frame-length N --suite 0x0478|0x0578 [--repeat R]

encrypt and decrypt stream in 1 MiB chunks. FILE may be "-" for stdin/stdout; a real --out file
is written to a temporary file beside it and renamed only on success, so a failed decrypt
leaves no (partial, unauthenticated) plaintext behind. decrypt checks that every --context pair
is present with that value in the message's encryption context (the message may hold more
pairs), and, unlike the ESDK's own stream reader, refuses bytes after the end of the message.
--print-header writes one JSON line describing the message header to stdout (not with --out -).
The ESDK for Python refuses to encrypt with a frame length that is not a multiple of 128 (it
compares against the AES block size in bits); it reads any frame length. --frame-length 0 writes
a non-framed message.

bench encrypts N random bytes held in memory and decrypts the result, both with the streaming
API read in 1 MiB chunks, checks the round trip by SHA-256, and prints one JSON line:
  {"bytes": N, "encrypt_seconds": x, "decrypt_seconds": y, "suite": "0x0478",
   "frame_length": F, "esdk_version": "..."}
With --repeat R the fastest encrypt and the fastest decrypt of R runs are reported.

Exit status: 0 on success; 1 with a one-line message on stderr when an operation fails (bad or
tampered message, wrong key, context mismatch, I/O error); 2 for usage errors. Set
ESDK_PEER_DEBUG=1 to get the Python traceback of a failure as well.
"""

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time

CHUNK = 1 << 20  # 1 MiB
PROG = "esdk_peer"

SUITES = {
    "0x0478": "AES_256_GCM_HKDF_SHA512_COMMIT_KEY",
    "0x0578": "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384",
}


class PeerError(Exception):
    """An expected failure: reported as one line on stderr, exit status 1."""


# ---------------------------------------------------------------------------------------------
# Argument parsing


def _key_hex(text):
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not hexadecimal")
    if len(key) != 32:
        raise argparse.ArgumentTypeError(
            "must be 64 hex digits (a 32-byte AES-256 key), got {} bytes".format(len(key))
        )
    return key


def _suite(text):
    norm = text.strip().lower()
    if not norm.startswith("0x"):
        norm = "0x" + norm
    if norm not in SUITES:
        raise argparse.ArgumentTypeError(
            "unsupported suite {!r}; choose from {}".format(text, ", ".join(SUITES))
        )
    return norm


def _context_pair(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected K=V, got {!r}".format(text))
    return key, value


def _non_negative(text):
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: {!r}".format(text))
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive(text):
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="AWS Encryption SDK (Python) interop peer with a raw AES-256-GCM wrapping key.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{encrypt,decrypt,bench}")
    sub.required = True

    def key_args(p):
        p.add_argument("--key-hex", required=True, type=_key_hex, metavar="HEX64",
                       help="the 32-byte wrapping key, hex")
        p.add_argument("--namespace", required=True, metavar="NS",
                       help="raw key provider id (keyring namespace)")
        p.add_argument("--key-name", required=True, metavar="NAME",
                       help="raw key id (keyring key name), UTF-8")
        p.add_argument("--context", action="append", default=[], type=_context_pair,
                       metavar="K=V", help="encryption context pair (repeatable)")
        p.add_argument("--in", dest="input", required=True, metavar="FILE", help="input, - for stdin")
        p.add_argument("--out", dest="output", required=True, metavar="FILE",
                       help="output, - for stdout")

    enc = sub.add_parser("encrypt", help="encrypt a file into an ESDK message")
    key_args(enc)
    enc.add_argument("--suite", required=True, type=_suite, metavar="0x0478|0x0578")
    enc.add_argument("--frame-length", required=True, type=_non_negative, metavar="N",
                     help="frame length in bytes; the Python ESDK only writes multiples of 128 "
                     "(it checks against the AES block size in bits); 0 = non-framed")

    dec = sub.add_parser("decrypt", help="decrypt an ESDK message into a file")
    key_args(dec)
    dec.add_argument("--max-encrypted-data-keys", type=_positive, default=None, metavar="N",
                     help="refuse messages with more than N encrypted data keys (default: no limit)")
    dec.add_argument("--print-header", action="store_true",
                     help="print the message header as one JSON line on stdout")

    bench = sub.add_parser("bench", help="time streaming encrypt+decrypt of random bytes in memory")
    bench.add_argument("--bytes", required=True, type=_non_negative, metavar="N")
    bench.add_argument("--frame-length", required=True, type=_non_negative, metavar="N")
    bench.add_argument("--suite", required=True, type=_suite, metavar="0x0478|0x0578")
    bench.add_argument("--repeat", type=_positive, default=1, metavar="R",
                       help="runs; the fastest encrypt and decrypt are reported (default 1)")

    return parser


def _context_dict(parser, pairs):
    context = {}
    for key, value in pairs:
        if key in context:
            parser.error("--context key {!r} given twice".format(key))
        context[key] = value
    return context


# ---------------------------------------------------------------------------------------------
# ESDK plumbing


def _import_esdk():
    try:
        import aws_encryption_sdk
    except ImportError as error:
        raise PeerError(
            "cannot import aws_encryption_sdk ({}); run this with the python that "
            "scripts/peer-venv prints".format(error)
        )
    # The ESDK logs some failures itself (e.g. "Error on closing" with a traceback); keep stderr
    # to our one-line messages unless debugging.
    if not os.environ.get("ESDK_PEER_DEBUG"):
        esdk_logger = logging.getLogger("aws_encryption_sdk")
        esdk_logger.addHandler(logging.NullHandler())
        esdk_logger.propagate = False
    return aws_encryption_sdk


def _client(esdk, max_encrypted_data_keys=None):
    return esdk.EncryptionSDKClient(
        commitment_policy=esdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
        max_encrypted_data_keys=max_encrypted_data_keys,
    )


def _master_key(key, namespace, key_name):
    from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKey

    return RawMasterKey(
        provider_id=namespace,
        key_id=key_name.encode("utf-8"),
        wrapping_key=WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=key,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        ),
    )


def _algorithm(esdk, suite):
    return getattr(esdk.Algorithm, SUITES[suite])


def _drain(stream, sink):
    """Copies a StreamEncryptor/StreamDecryptor to sink in CHUNK reads; returns bytes copied."""
    total = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return total
        sink.write(chunk)
        total += len(chunk)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# Files


def _open_input(path):
    if path == "-":
        return sys.stdin.buffer, False
    try:
        return open(path, "rb"), True
    except OSError as error:
        raise PeerError("cannot open input {}: {}".format(path, error.strerror or error))


class _Output(object):
    """--out FILE written atomically: a temporary file beside it, renamed on commit()."""

    def __init__(self, path):
        self.path = path
        self.tmp = None
        if path == "-":
            self.file = sys.stdout.buffer
            return
        if os.path.exists(path) and not os.path.isfile(path):
            # Never rename over a device, pipe or directory (that would replace /dev/null).
            raise PeerError("output {} exists and is not a regular file".format(path))
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=".esdk-peer-", suffix=".tmp", dir=directory)
        except OSError as error:
            raise PeerError("cannot create output {}: {}".format(path, error.strerror or error))
        self.file = os.fdopen(fd, "wb")

    def commit(self):
        if self.tmp is None:
            self.file.flush()
            return
        try:
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as error:
            raise PeerError("cannot write output {}: {}".format(self.path, error.strerror or error))
        self.tmp = None

    def discard(self):
        if self.tmp is None:
            return
        try:
            self.file.close()
        finally:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


# ---------------------------------------------------------------------------------------------
# Subcommands


def cmd_encrypt(args, context):
    esdk = _import_esdk()
    client = _client(esdk)
    key = _master_key(args.key_hex, args.namespace, args.key_name)
    source, close_source = _open_input(args.input)
    out = _Output(args.output)
    try:
        encryptor = client.stream(
            mode="e",
            source=source,
            key_provider=key,
            algorithm=_algorithm(esdk, args.suite),
            frame_length=args.frame_length,
            encryption_context=context,
        )
        _drain(encryptor, out.file)
        encryptor.close()
        out.commit()
    finally:
        out.discard()
        if close_source:
            source.close()


def _header_json(header):
    algorithm = header.algorithm
    return {
        "version": "0x{:02x}".format(header.version.value),
        "suite": "0x{:04x}".format(algorithm.algorithm_id),
        "message_id": header.message_id.hex(),
        "content_type": header.content_type.name,
        "frame_length": header.frame_length,
        "encryption_context": {_text(k): _text(v) for k, v in sorted(header.encryption_context.items())},
        "encrypted_data_keys": [
            {
                "provider_id": _text(edk.key_provider.provider_id),
                "key_info_hex": edk.key_provider.key_info.hex(),
                "ciphertext_len": len(edk.encrypted_data_key),
            }
            for edk in sorted(header.encrypted_data_keys,
                              key=lambda e: (e.key_provider.provider_id, e.key_provider.key_info))
        ],
    }


def cmd_decrypt(args, context):
    esdk = _import_esdk()
    client = _client(esdk, args.max_encrypted_data_keys)
    key = _master_key(args.key_hex, args.namespace, args.key_name)
    source, close_source = _open_input(args.input)
    out = None
    try:
        decryptor = client.stream(mode="d", source=source, key_provider=key)
        # Reading the header unwraps the data key and checks the commitment and header tag.
        header = decryptor.header
        found = {_text(k): _text(v) for k, v in header.encryption_context.items()}
        for k, v in context.items():
            if k not in found:
                raise PeerError(
                    "decrypt failed: encryption context key {!r} is not in the message".format(k)
                )
            if found[k] != v:
                raise PeerError(
                    "decrypt failed: encryption context {!r} is {!r} in the message, expected {!r}".format(
                        k, found[k], v
                    )
                )
        out = _Output(args.output)
        _drain(decryptor, out.file)
        decryptor.close()  # raises unless the footer (and signature, if any) was read
        if source.read(1):
            raise PeerError("decrypt failed: bytes follow the end of the message")
        out.commit()
        if args.print_header:
            sys.stdout.write(json.dumps(_header_json(header), sort_keys=True) + "\n")
            sys.stdout.flush()
    finally:
        if out is not None:
            out.discard()
        if close_source:
            source.close()


def _bench_once(client, key, algorithm, frame_length, plaintext):
    start = time.perf_counter()
    encryptor = client.stream(
        mode="e",
        source=io.BytesIO(plaintext),
        key_provider=key,
        algorithm=algorithm,
        frame_length=frame_length,
    )
    sink = io.BytesIO()
    _drain(encryptor, sink)
    encryptor.close()
    ciphertext = sink.getvalue()
    encrypt_seconds = time.perf_counter() - start

    start = time.perf_counter()
    decryptor = client.stream(mode="d", source=io.BytesIO(ciphertext), key_provider=key)
    sink = io.BytesIO()
    _drain(decryptor, sink)
    decryptor.close()
    decrypted = sink.getvalue()
    decrypt_seconds = time.perf_counter() - start
    return encrypt_seconds, decrypt_seconds, decrypted


def cmd_bench(args):
    esdk = _import_esdk()
    client = _client(esdk)
    key = _master_key(os.urandom(32), "esdk-peer-bench", "bench-key")
    algorithm = _algorithm(esdk, args.suite)
    plaintext = os.urandom(args.bytes)
    expected = hashlib.sha256(plaintext).digest()
    best_encrypt = best_decrypt = None
    for _ in range(args.repeat):
        encrypt_seconds, decrypt_seconds, decrypted = _bench_once(
            client, key, algorithm, args.frame_length, plaintext
        )
        if len(decrypted) != len(plaintext) or hashlib.sha256(decrypted).digest() != expected:
            raise PeerError(
                "bench failed: round trip mismatch ({} bytes in, {} bytes out)".format(
                    len(plaintext), len(decrypted)
                )
            )
        del decrypted
        best_encrypt = encrypt_seconds if best_encrypt is None else min(best_encrypt, encrypt_seconds)
        best_decrypt = decrypt_seconds if best_decrypt is None else min(best_decrypt, decrypt_seconds)
    result = {
        "bytes": args.bytes,
        "encrypt_seconds": round(best_encrypt, 6),
        "decrypt_seconds": round(best_decrypt, 6),
        "suite": args.suite,
        "frame_length": args.frame_length,
        "esdk_version": esdk.__version__,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------


# cryptography's exceptions carry no message of their own.
_EXPLAIN = {
    "InvalidTag": "AES-GCM authentication failed (wrong key, or tampered data key, header or frame)",
    "InvalidSignature": "ECDSA signature over the message does not verify",
}


def _one_line(error):
    text = " ".join(str(error).split())
    name = type(error).__name__
    if not text and name in _EXPLAIN:
        text = _EXPLAIN[name]
    return "{}: {}".format(name, text) if text else name


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    context = {}
    if args.command in ("encrypt", "decrypt"):
        context = _context_dict(parser, args.context)
        if args.command == "decrypt" and args.print_header and args.output == "-":
            parser.error("--print-header needs --out FILE (stdout carries the plaintext)")
    try:
        if args.command == "encrypt":
            cmd_encrypt(args, context)
        elif args.command == "decrypt":
            cmd_decrypt(args, context)
        else:
            cmd_bench(args)
    except PeerError as error:
        sys.stderr.write("{}: {}\n".format(PROG, error))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("{}: interrupted\n".format(PROG))
        return 130
    except Exception as error:  # pylint: disable=broad-except
        if os.environ.get("ESDK_PEER_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.stderr.write("{}: {} failed: {}\n".format(PROG, args.command, _one_line(error)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
