#!/usr/bin/env bash
# Regenerates the captured TPM evidence in this directory with a fresh swtpm and tpm2-tools
# (installed by scripts/setup). Usage: attestation/test_data/tpm/capture.sh
# The EK and CA certificates are valid from the capture time: update NOW in
# tests/tpm_vectors.rs if you recapture.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/tpm-capture.XXXXXX)
trap 'kill "$(cat "$work/swtpm.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/ca" "$work/state" "$work/certs"
cat >"$work/swtpm-localca.conf" <<CONF
statedir = $work/ca
signingkey = $work/ca/signkey.pem
issuercert = $work/ca/issuercert.pem
certserial = $work/ca/certserial
CONF
printf -- '--platform-manufacturer KMS-Test\n--platform-version 2.1\n--platform-model swtpm\n' >"$work/swtpm-localca.options"
cat >"$work/swtpm_setup.conf" <<CONF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = $work/swtpm-localca.conf
create_certs_tool_options = $work/swtpm-localca.options
active_pcr_banks = sha256
CONF
swtpm_setup --tpm2 --tpmstate "$work/state" --create-ek-cert --create-platform-cert \
  --config "$work/swtpm_setup.conf" --write-ek-cert-files "$work/certs" --pcr-banks sha256 >/dev/null
port=$((20000 + RANDOM % 20000))
swtpm socket --tpm2 --tpmstate dir="$work/state" --server type=tcp,port=$port,bindaddr=127.0.0.1 \
  --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
  --daemon --pid file="$work/swtpm.pid"
sleep 0.5
export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port"
cd "$work"
t() { "$@" >/dev/null; tpm2_flushcontext -t; }

# Binding: H("kms-attest-v1\0" ‖ 32 × 0x5a ‖ "workload HPKE public key"), as binding::tpm_qualifying_data.
qualification=$( { printf 'kms-attest-v1\0'; head -c 32 /dev/zero | tr '\0' 'Z'; printf 'workload HPKE public key'; } | sha256sum | cut -d' ' -f1)
t tpm2_pcrextend 16:sha256=b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c
t tpm2_createek -c ek.ctx -G rsa -u ek.pub
t tpm2_createek -c ek384.ctx -G ecc384 -u ek384.pub
for case in rsassa:rsa rsapss:rsa ecdsa:ecc; do
  scheme=${case%%:*} key=${case##*:}
  out="$here/quote-$scheme"
  mkdir -p "$out"
  t tpm2_createak -C ek.ctx -c ak.ctx -G "$key" -g sha256 -s "$scheme" -u "$out/ak.pub" -n "$out/ak.name" -r ak.priv
  t tpm2_quote -c ak.ctx -l sha256:0,1,2,3,7,16 -q "$qualification" -m "$out/quote.msg" -s "$out/quote.sig" \
    -o "$out/pcrs.out" --scheme "$scheme" -g sha256
  echo "$qualification" >"$out/qualification.hex"
done
mkdir -p "$here/ek"
cp certs/ek-rsa2048.crt certs/ek-secp384r1.crt "$here/ek/"
cp ek.pub "$here/ek/ek-rsa2048.pub"
cp ek384.pub "$here/ek/ek-secp384r1.pub"
cp ca/swtpm-localca-rootca-cert.pem "$here/ek/root.pem"
cp ca/issuercert.pem "$here/ek/issuer.pem"
echo "captured into $here"
