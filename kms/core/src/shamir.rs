//! Splitting the root key M-of-N among custodians (Shamir's scheme over GF(256), the `blahaj`
//! crate) and putting it back together, checked against the recorded key check value.

use blahaj::{Share, Sharks};

use crate::root::{key_check_value, RootKeyMaterial};
use crate::secret::SecretBytes;
use crate::Error;

/// Splits `root` into `n` shares of which any `threshold` rebuild it. 1 ≤ threshold ≤ n ≤ 255.
pub fn split(root: &RootKeyMaterial, threshold: u8, n: u8) -> Result<Vec<SecretBytes>, Error> {
    if threshold == 0 || threshold > n {
        return Err(Error::Shamir(format!(
            "threshold must be between 1 and the number of custodians ({n}), not {threshold}"
        )));
    }
    Ok(Sharks(threshold)
        .dealer(root.expose_secret())
        .take(usize::from(n))
        .map(|s| SecretBytes::new(Vec::from(&s)))
        .collect())
}

/// Rebuilds the root key from `threshold` or more shares and checks it against `kcv`.
pub fn combine(threshold: u8, shares: &[SecretBytes], kcv: &[u8; 16]) -> Result<RootKeyMaterial, Error> {
    let parsed = shares
        .iter()
        .map(|s| Share::try_from(s.expose_secret()).map_err(|e| Error::Shamir(e.to_owned())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut secret = zeroize::Zeroizing::new(
        Sharks(threshold)
            .recover(parsed.iter())
            .map_err(|e| Error::Shamir(e.to_owned()))?,
    );
    let root = RootKeyMaterial::from_slice(&mut secret).ok_or(Error::KeyCheckMismatch)?;
    // The check value is public (it is stored in the database): no need for constant time.
    if &key_check_value(&root) != kcv {
        return Err(Error::KeyCheckMismatch);
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_m_of_n_rebuild_and_fewer_or_wrong_do_not() {
        let root = RootKeyMaterial::generate().unwrap();
        let kcv = key_check_value(&root);
        let shares = split(&root, 2, 3).unwrap();
        let pick = |i: usize| SecretBytes::new(shares[i].expose_secret().to_vec());
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let got = combine(2, &[pick(a), pick(b)], &kcv).unwrap();
            assert_eq!(got.expose_secret(), root.expose_secret());
        }
        assert!(combine(2, &[pick(0)], &kcv).is_err());
        let mut bad = shares[1].expose_secret().to_vec();
        bad[5] ^= 1;
        assert!(matches!(
            combine(2, &[pick(0), SecretBytes::new(bad)], &kcv),
            Err(Error::KeyCheckMismatch)
        ));
        let other = split(&RootKeyMaterial::generate().unwrap(), 2, 3).unwrap();
        assert!(matches!(
            combine(2, &[pick(0), SecretBytes::new(other[1].expose_secret().to_vec())], &kcv),
            Err(Error::KeyCheckMismatch)
        ));
        assert!(split(&root, 4, 3).is_err());
        assert!(split(&root, 0, 3).is_err());
    }
}
