//! The two bits of DER this crate needs: the OCTET STRING around `CKA_EC_POINT`, and ECDSA
//! signatures (raw `r ‖ s` from `CKM_ECDSA` to the ASN.1 `SEQUENCE { r INTEGER, s INTEGER }`
//! that ring and the server verify). Only P-256 sizes are accepted.

/// DER of the P-256 named curve OID (1.2.840.10045.3.1.7), the `CKA_EC_PARAMS` of our keys.
pub(crate) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The SEC1 uncompressed point from a `CKA_EC_POINT` value. PKCS#11 says it is a DER OCTET STRING
/// around the point; a few modules return the bare point, which is accepted too.
pub(crate) fn ec_point(value: &[u8]) -> Option<Vec<u8>> {
    let point = match value {
        [0x04, 65, rest @ ..] if rest.len() == 65 => rest,
        bare if bare.len() == 65 => bare,
        _ => return None,
    };
    (point[0] == 0x04).then(|| point.to_vec())
}

fn push_integer(out: &mut Vec<u8>, unsigned_be: &[u8]) {
    let mut v = unsigned_be;
    while v.len() > 1 && v[0] == 0 {
        v = &v[1..];
    }
    let pad = v[0] & 0x80 != 0;
    out.push(0x02);
    out.push((v.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

/// ASN.1 DER of a raw P-256 ECDSA signature (`r ‖ s`, 32 bytes each).
pub(crate) fn ecdsa_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let mut body = Vec::with_capacity(72);
    push_integer(&mut body, &raw[..32]);
    push_integer(&mut body, &raw[32..]);
    // At most 2 × (2 + 33) = 70 bytes: the short length form always fits.
    let mut out = Vec::with_capacity(2 + body.len());
    out.push(0x30);
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_minimal_integers() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 1; // s is 1
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 2 + 33 + 3, 0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
        assert!(ecdsa_der(&raw[..63]).is_none());
    }

    #[test]
    fn ec_point_forms() {
        let mut point = vec![4u8; 65];
        point[1] = 9;
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&point);
        assert_eq!(ec_point(&wrapped).unwrap(), point);
        assert_eq!(ec_point(&point).unwrap(), point);
        assert!(ec_point(&wrapped[..60]).is_none());
    }
}
