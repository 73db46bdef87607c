//! The only place protobuf messages become domain types and back (with [`crate::grpc`], which
//! only moves them): one module per service.

pub mod admin;
pub mod attestation;
pub mod hardware;
pub mod key;
pub mod quorum;

use crate::error::ApiError;
use kms_core::context::EncryptionContext;
use kms_proto::Reason;
use std::collections::BTreeMap;

/// A page size: 1 to 1000, 0 meaning 100.
pub(crate) fn page_size(requested: u32) -> Result<u32, ApiError> {
    match requested {
        0 => Ok(100),
        n @ 1..=1000 => Ok(n),
        n => Err(ApiError::new(
            Reason::InvalidArgument,
            format!("page_size {n}: at most 1000"),
        )),
    }
}

/// The `next_page_token` of a listing page that ends at the row with id `last` (empty on the
/// last page). Tokens are opaque (`p1.` and the id in unpadded base64url), so that any id the
/// database holds pages on, including one kmsd never wrote and would not accept from a caller: a
/// forged row at the end of a page is left out of it, and the next page starts after it.
pub(crate) fn page_token(last: String) -> String {
    use base64::Engine as _;
    if last.is_empty() {
        return last;
    }
    format!(
        "{PAGE_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
    )
}

/// The id a `page_token` the server returned starts after ("" for the first page).
pub(crate) fn page_after(token: &str) -> Result<String, ApiError> {
    use base64::Engine as _;
    if token.is_empty() {
        return Ok(String::new());
    }
    let bad = || ApiError::new(Reason::BadPageToken, "page_token is not one this server returned");
    if token.len() > MAX_PAGE_TOKEN {
        return Err(bad());
    }
    let encoded = token.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| bad())?;
    match String::from_utf8(bytes) {
        Ok(after) if !after.is_empty() => Ok(after),
        _ => Err(bad()),
    }
}

const PAGE_TOKEN_PREFIX: &str = "p1.";
/// Longer than any token of an id the tables allow, short enough to refuse junk before decoding.
const MAX_PAGE_TOKEN: usize = 4096;

/// Parses a wire encryption context.
pub fn context(map: BTreeMap<String, String>) -> Result<EncryptionContext, ApiError> {
    Ok(EncryptionContext::new(map)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_carry_any_id_and_refuse_what_the_server_did_not_return() {
        assert_eq!(page_token(String::new()), "");
        assert_eq!(page_after("").unwrap(), "");
        for id in [
            "k-0123456789abcdef0123456789abcdef",
            "hw-00",
            "k-zz",
            "ü ' \" ; --",
            "x",
        ] {
            let token = page_token(id.to_owned());
            assert!(token.starts_with("p1."), "{token}");
            assert_eq!(page_after(&token).unwrap(), id);
        }
        let junk = [
            "junk".to_owned(),
            "k-0123456789abcdef0123456789abcdef".to_owned(),
            "p1.".to_owned(),
            "p1.!!".to_owned(),
            "p1.AA=".to_owned(),
            "p1.gA".to_owned(), // 0x80: not UTF-8
            "p2.eA".to_owned(),
            format!("p1.{}", "eA".repeat(MAX_PAGE_TOKEN)),
        ];
        for token in junk {
            let e = page_after(&token).unwrap_err();
            assert_eq!(e.reason, Reason::BadPageToken, "{token}");
        }
    }
}
