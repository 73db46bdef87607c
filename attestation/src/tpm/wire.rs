//! Reading the TPM 2.0 structures that evidence carries (TPM 2.0 Library Part 2 marshalling:
//! big-endian integers, `TPM2B` = u16 size + bytes, unions selected by a preceding tag).
//!
//! Only what the verifier needs, parsed strictly: sizes are bounded by the specification's
//! maxima, unknown algorithms and trailing bytes are refused. Every read is bounds-checked, so
//! malformed input yields a `Malformed` refusal and never a panic. The parsed views borrow from
//! the input, so signatures are always checked over the exact bytes received.

use crate::{Check, Refusal};

/// TPM_ALG_ID values used here (TPM 2.0 Library Part 2, 6.3).
pub(crate) mod alg {
    pub(crate) const RSA: u16 = 0x0001;
    pub(crate) const SHA1: u16 = 0x0004;
    pub(crate) const HMAC: u16 = 0x0005;
    pub(crate) const AES: u16 = 0x0006;
    pub(crate) const MGF1: u16 = 0x0007;
    pub(crate) const KEYEDHASH: u16 = 0x0008;
    pub(crate) const SHA256: u16 = 0x000B;
    pub(crate) const SHA384: u16 = 0x000C;
    pub(crate) const SHA512: u16 = 0x000D;
    pub(crate) const NULL: u16 = 0x0010;
    pub(crate) const SM3_256: u16 = 0x0012;
    pub(crate) const SM4: u16 = 0x0013;
    pub(crate) const RSASSA: u16 = 0x0014;
    pub(crate) const RSAES: u16 = 0x0015;
    pub(crate) const RSAPSS: u16 = 0x0016;
    pub(crate) const OAEP: u16 = 0x0017;
    pub(crate) const ECDSA: u16 = 0x0018;
    pub(crate) const ECDH: u16 = 0x0019;
    pub(crate) const ECDAA: u16 = 0x001A;
    pub(crate) const SM2: u16 = 0x001B;
    pub(crate) const ECSCHNORR: u16 = 0x001C;
    pub(crate) const ECMQV: u16 = 0x001D;
    pub(crate) const KDF1_SP800_56A: u16 = 0x0020;
    pub(crate) const KDF2: u16 = 0x0021;
    pub(crate) const KDF1_SP800_108: u16 = 0x0022;
    pub(crate) const ECC: u16 = 0x0023;
    pub(crate) const SYMCIPHER: u16 = 0x0025;
    pub(crate) const CAMELLIA: u16 = 0x0026;
    pub(crate) const CFB: u16 = 0x0043;

    /// The digest size of a hash algorithm, if it is one.
    pub(crate) fn digest_size(hash: u16) -> Option<usize> {
        match hash {
            SHA1 => Some(20),
            SHA256 | SM3_256 => Some(32),
            SHA384 => Some(48),
            SHA512 => Some(64),
            _ => None,
        }
    }
}

/// TPM_ECC_CURVE values.
pub(crate) mod curve {
    pub(crate) const NIST_P256: u16 = 0x0003;
    pub(crate) const NIST_P384: u16 = 0x0004;
}

/// TPMA_OBJECT bits.
pub(crate) mod attr {
    pub(crate) const FIXED_TPM: u32 = 1 << 1;
    pub(crate) const FIXED_PARENT: u32 = 1 << 4;
    pub(crate) const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub(crate) const RESTRICTED: u32 = 1 << 16;
    pub(crate) const DECRYPT: u32 = 1 << 17;
    pub(crate) const SIGN: u32 = 1 << 18;
}

/// TPM_GENERATED_VALUE: the magic of every TPMS_ATTEST the TPM produces.
pub(crate) const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub(crate) const ST_ATTEST_QUOTE: u16 = 0x8018;

// Maxima from TPM 2.0 Library Part 2 (sizes of the unions the TPM2B types wrap).
const MAX_DIGEST: usize = 64; // sizeof(TPMU_HA)
const MAX_NAME: usize = 2 + MAX_DIGEST; // sizeof(TPMU_NAME)
const MAX_RSA_KEY_BYTES: usize = 512;
const MAX_ECC_KEY_BYTES: usize = 128;
const PCR_SELECT_MAX: usize = 4; // 32 PCRs
const HASH_COUNT: u32 = 16; // bound on TPML_PCR_SELECTION.count

/// A cursor over marshalled bytes. Every read names the field it reads, for the refusal detail.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn malformed(&self, field: &str, why: impl std::fmt::Display) -> Refusal {
        Refusal::new(
            Check::Malformed,
            format!("{} {field} at offset {}: {why}", self.what, self.pos),
        )
    }

    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], Refusal> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| self.malformed(field, format!("truncated (needs {n} bytes)")))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], Refusal> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, Refusal> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, Refusal> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, Refusal> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, Refusal> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A TPM2B: u16 size, then that many bytes, at most `max`.
    pub(crate) fn tpm2b(&mut self, max: usize, field: &str) -> Result<&'a [u8], Refusal> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(self.malformed(field, format!("size {size} exceeds {max}")));
        }
        self.take(size, field)
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), Refusal> {
        if self.pos != self.buf.len() {
            return Err(self.malformed("end", format!("{} trailing bytes", self.buf.len() - self.pos)));
        }
        Ok(())
    }
}

/// TPMT_SYM_DEF_OBJECT, when not TPM_ALG_NULL.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct SymDef {
    pub(crate) alg: u16,
    pub(crate) key_bits: u16,
    pub(crate) mode: u16,
}

/// A scheme: algorithm and (if it has one) hash. `alg == NULL` for none.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Scheme {
    pub(crate) alg: u16,
    pub(crate) hash: u16,
}

/// TPMU_PUBLIC_PARMS + TPMU_PUBLIC_ID for the two asymmetric key types.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum KeyParams<'a> {
    Rsa {
        symmetric: Option<SymDef>,
        scheme: Scheme,
        key_bits: u16,
        /// 0 means the default, 2^16 + 1.
        exponent: u32,
        modulus: &'a [u8],
    },
    Ecc {
        symmetric: Option<SymDef>,
        scheme: Scheme,
        curve: u16,
        kdf: Scheme,
        x: &'a [u8],
        y: &'a [u8],
    },
}

/// TPMT_PUBLIC of an RSA or ECC key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct PublicArea<'a> {
    /// The exact marshalled TPMT_PUBLIC (what the object's name hashes).
    pub(crate) bytes: &'a [u8],
    pub(crate) name_alg: u16,
    pub(crate) attributes: u32,
    pub(crate) params: KeyParams<'a>,
}

fn sym_def_object(r: &mut Reader<'_>) -> Result<Option<SymDef>, Refusal> {
    let alg = r.u16("symmetric.algorithm")?;
    match alg {
        alg::NULL => Ok(None),
        alg::AES | alg::SM4 | alg::CAMELLIA => Ok(Some(SymDef {
            alg,
            key_bits: r.u16("symmetric.keyBits")?,
            mode: r.u16("symmetric.mode")?,
        })),
        other => Err(r.malformed("symmetric.algorithm", format!("unknown algorithm {other:#06x}"))),
    }
}

/// TPMT_RSA_SCHEME / TPMT_ECC_SCHEME (TPMU_ASYM_SCHEME details).
fn asym_scheme(r: &mut Reader<'_>) -> Result<Scheme, Refusal> {
    let alg = r.u16("scheme.scheme")?;
    let hash = match alg {
        alg::NULL | alg::RSAES => alg::NULL,
        alg::RSASSA | alg::RSAPSS | alg::OAEP | alg::ECDSA | alg::ECDH | alg::SM2 | alg::ECSCHNORR | alg::ECMQV => {
            r.u16("scheme.hashAlg")?
        }
        alg::ECDAA => {
            let hash = r.u16("scheme.hashAlg")?;
            r.u16("scheme.count")?;
            hash
        }
        other => return Err(r.malformed("scheme.scheme", format!("unknown scheme {other:#06x}"))),
    };
    Ok(Scheme { alg, hash })
}

fn kdf_scheme(r: &mut Reader<'_>) -> Result<Scheme, Refusal> {
    let alg = r.u16("kdf.scheme")?;
    let hash = match alg {
        alg::NULL => alg::NULL,
        alg::MGF1 | alg::KDF1_SP800_56A | alg::KDF2 | alg::KDF1_SP800_108 => r.u16("kdf.hashAlg")?,
        other => return Err(r.malformed("kdf.scheme", format!("unknown KDF {other:#06x}"))),
    };
    Ok(Scheme { alg, hash })
}

/// Parses a TPM2B_PUBLIC (what `tpm2_createak -u` and `tpm2_createek -u` write). The whole input
/// must be the structure.
pub(crate) fn tpm2b_public<'a>(bytes: &'a [u8], what: &'static str) -> Result<PublicArea<'a>, Refusal> {
    let mut outer = Reader::new(bytes, what);
    let inner = outer.tpm2b(usize::from(u16::MAX), "TPM2B_PUBLIC.size")?;
    outer.finish()?;
    if inner.is_empty() {
        return Err(Refusal::new(Check::Malformed, format!("{what}: empty TPM2B_PUBLIC")));
    }
    tpmt_public(inner, what)
}

/// Parses a TPMT_PUBLIC that must fill `bytes`.
pub(crate) fn tpmt_public<'a>(bytes: &'a [u8], what: &'static str) -> Result<PublicArea<'a>, Refusal> {
    let mut r = Reader::new(bytes, what);
    let object_type = r.u16("type")?;
    let name_alg = r.u16("nameAlg")?;
    if alg::digest_size(name_alg).is_none() {
        return Err(r.malformed("nameAlg", format!("not a hash algorithm: {name_alg:#06x}")));
    }
    let attributes = r.u32("objectAttributes")?;
    r.tpm2b(MAX_DIGEST, "authPolicy")?;
    let params = match object_type {
        alg::RSA => {
            let symmetric = sym_def_object(&mut r)?;
            let scheme = asym_scheme(&mut r)?;
            let key_bits = r.u16("keyBits")?;
            let exponent = r.u32("exponent")?;
            let modulus = r.tpm2b(MAX_RSA_KEY_BYTES, "unique.rsa")?;
            KeyParams::Rsa {
                symmetric,
                scheme,
                key_bits,
                exponent,
                modulus,
            }
        }
        alg::ECC => {
            let symmetric = sym_def_object(&mut r)?;
            let scheme = asym_scheme(&mut r)?;
            let curve = r.u16("curveID")?;
            let kdf = kdf_scheme(&mut r)?;
            let x = r.tpm2b(MAX_ECC_KEY_BYTES, "unique.ecc.x")?;
            let y = r.tpm2b(MAX_ECC_KEY_BYTES, "unique.ecc.y")?;
            KeyParams::Ecc {
                symmetric,
                scheme,
                curve,
                kdf,
                x,
                y,
            }
        }
        alg::KEYEDHASH | alg::SYMCIPHER => {
            return Err(r.malformed("type", "not an asymmetric key (keyed hash or symmetric cipher)"));
        }
        other => return Err(r.malformed("type", format!("unknown object type {other:#06x}"))),
    };
    r.finish()?;
    Ok(PublicArea {
        bytes,
        name_alg,
        attributes,
        params,
    })
}

/// TPMS_PCR_SELECTION: a bank and the bitmap of selected PCRs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct PcrSelection {
    pub(crate) hash: u16,
    pub(crate) bitmap: Vec<u8>,
}

impl PcrSelection {
    /// The selected PCR indices, ascending (the order the TPM hashes them in).
    pub(crate) fn indices(&self) -> impl Iterator<Item = u8> + '_ {
        self.bitmap.iter().enumerate().flat_map(|(byte, bits)| {
            (0..8u8).filter(move |bit| bits & (1 << bit) != 0).map(move |bit| {
                // byte < PCR_SELECT_MAX (4), so this is < 32 and fits.
                (byte as u8) * 8 + bit
            })
        })
    }
}

/// TPMS_ATTEST of a quote (TPMS_QUOTE_INFO attested).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Quote<'a> {
    pub(crate) qualified_signer: &'a [u8],
    pub(crate) extra_data: &'a [u8],
    pub(crate) clock: u64,
    pub(crate) reset_count: u32,
    pub(crate) restart_count: u32,
    pub(crate) safe: bool,
    pub(crate) firmware_version: u64,
    pub(crate) pcr_select: Vec<PcrSelection>,
    pub(crate) pcr_digest: &'a [u8],
}

/// Parses a TPMS_ATTEST (what `tpm2_quote -m` writes) that must be a quote and fill `bytes`.
/// A wrong magic or type is a `Version` refusal; anything else that does not parse is `Malformed`.
pub(crate) fn quote(bytes: &[u8]) -> Result<Quote<'_>, Refusal> {
    let mut r = Reader::new(bytes, "TPMS_ATTEST");
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED_VALUE {
        return Err(Refusal::new(
            Check::Version,
            format!("TPMS_ATTEST magic is {magic:#010x}, not TPM_GENERATED_VALUE"),
        ));
    }
    let st = r.u16("type")?;
    if st != ST_ATTEST_QUOTE {
        return Err(Refusal::new(
            Check::Version,
            format!("TPMS_ATTEST type is {st:#06x}, not TPM_ST_ATTEST_QUOTE"),
        ));
    }
    let qualified_signer = r.tpm2b(MAX_NAME, "qualifiedSigner")?;
    let extra_data = r.tpm2b(MAX_DIGEST, "extraData")?;
    let clock = r.u64("clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    let restart_count = r.u32("clockInfo.restartCount")?;
    let safe = match r.u8("clockInfo.safe")? {
        0 => false,
        1 => true,
        other => return Err(r.malformed("clockInfo.safe", format!("not a TPMI_YES_NO: {other}"))),
    };
    let firmware_version = r.u64("firmwareVersion")?;
    let count = r.u32("pcrSelect.count")?;
    if count > HASH_COUNT {
        return Err(r.malformed("pcrSelect.count", format!("{count} selections")));
    }
    let mut pcr_select = Vec::new();
    for _ in 0..count {
        let hash = r.u16("pcrSelections.hash")?;
        let size = usize::from(r.u8("pcrSelections.sizeofSelect")?);
        if size > PCR_SELECT_MAX {
            return Err(r.malformed("pcrSelections.sizeofSelect", format!("{size} > {PCR_SELECT_MAX}")));
        }
        let bitmap = r.take(size, "pcrSelections.pcrSelect")?.to_vec();
        pcr_select.push(PcrSelection { hash, bitmap });
    }
    let pcr_digest = r.tpm2b(MAX_DIGEST, "pcrDigest")?;
    r.finish()?;
    Ok(Quote {
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        pcr_select,
        pcr_digest,
    })
}

/// TPMT_SIGNATURE of the kinds a quote can carry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Signature<'a> {
    /// RSASSA-PKCS1-v1_5 or RSASSA-PSS (`alg`), over `hash`.
    Rsa { alg: u16, hash: u16, sig: &'a [u8] },
    /// ECDSA (or another ECC scheme, `alg`), over `hash`.
    Ecc {
        alg: u16,
        hash: u16,
        r: &'a [u8],
        s: &'a [u8],
    },
}

/// Parses a TPMT_SIGNATURE (what `tpm2_quote -s` writes) that must fill `bytes`.
pub(crate) fn signature(bytes: &[u8]) -> Result<Signature<'_>, Refusal> {
    let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
    let sig_alg = r.u16("sigAlg")?;
    let sig = match sig_alg {
        alg::RSASSA | alg::RSAPSS => Signature::Rsa {
            alg: sig_alg,
            hash: r.u16("hash")?,
            sig: r.tpm2b(MAX_RSA_KEY_BYTES, "sig")?,
        },
        alg::ECDSA | alg::ECDAA | alg::SM2 | alg::ECSCHNORR => Signature::Ecc {
            alg: sig_alg,
            hash: r.u16("hash")?,
            r: r.tpm2b(MAX_ECC_KEY_BYTES, "signatureR")?,
            s: r.tpm2b(MAX_ECC_KEY_BYTES, "signatureS")?,
        },
        alg::HMAC => return Err(r.malformed("sigAlg", "HMAC signatures are not asymmetric")),
        alg::NULL => return Err(r.malformed("sigAlg", "TPM_ALG_NULL (no signature)")),
        other => return Err(r.malformed("sigAlg", format!("unknown signature algorithm {other:#06x}"))),
    };
    r.finish()?;
    Ok(sig)
}

/// Appends a TPM2B (u16 big-endian size, then the bytes). The caller bounds `bytes` to fit.
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[0, 5, 1, 2], "t");
        let e = r.tpm2b(64, "x").unwrap_err();
        assert_eq!(e.check, Check::Malformed);
        let mut r = Reader::new(&[0xff, 0xff], "t");
        assert!(r.tpm2b(usize::MAX, "x").is_err());
        let mut r = Reader::new(&[0, 0, 0], "t");
        assert_eq!(r.u16("a").unwrap(), 0);
        assert!(r.u16("b").is_err());
    }

    #[test]
    fn selection_indices_are_ascending() {
        let s = PcrSelection {
            hash: alg::SHA256,
            bitmap: vec![0x8f, 0x00, 0x01, 0x80],
        };
        assert_eq!(s.indices().collect::<Vec<_>>(), vec![0, 1, 2, 3, 7, 16, 31]);
    }
}
