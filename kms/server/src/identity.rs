//! Who is calling the data plane: the principal named by the mTLS client certificate, which
//! tonic has already verified against the configured client CA. URI SAN (e.g. SPIFFE) first,
//! then `dns:` + DNS SAN, then `cn:` + subject CN. Plaintext connections exist only in dev mode
//! and are `anonymous`. Parsed principals are cached by certificate digest.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kms_core::ids::Principal;
use ring::digest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::audit::{Audit, AuditLog};
use crate::error::ApiError;
use crate::limits::Limits;
use kms_proto::Reason;

/// The callers of a service: each call's principal from its client certificate (`anonymous` on
/// dev mode's plaintext listener), within its rate limit; a call without one is refused and
/// audited as `unidentified` (or, over the peer's limit, counted).
#[derive(Clone, Debug)]
pub struct Callers {
    identities: Arc<Identities>,
    limits: Arc<Limits>,
    audit: AuditLog,
    tls: bool,
}

impl Callers {
    /// Callers identified by `identities` and limited by `limits` (`tls`: the listener verifies
    /// client certificates).
    pub fn new(identities: Arc<Identities>, limits: Arc<Limits>, audit: AuditLog, tls: bool) -> Self {
        Self {
            identities,
            limits,
            audit,
            tls,
        }
    }

    /// The caller of `request`, within its rate limit, or the refusal (audited for `operation`,
    /// unless it is a rate limit's).
    pub async fn identify<T>(
        &self,
        request: &tonic::Request<T>,
        operation: &'static str,
    ) -> Result<Principal, tonic::Status> {
        match self.identities.principal(request, self.tls) {
            Ok(p) => {
                self.limits.check_principal(&p).map_err(|e| e.to_status())?;
                Ok(p)
            }
            Err(e) => {
                self.unauthenticated(request.remote_addr())?;
                self.audit
                    .record(Audit::new("unidentified", operation).failed(&e))
                    .await;
                Err(e.to_status())
            }
        }
    }

    /// Spends from the rate limit of `request`'s caller, for a call that does not need its
    /// identity (the unauthenticated reads, and admin requests before their signature is
    /// checked): its principal's, or if it has none its peer's.
    pub fn limit<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        match self.identities.principal(request, self.tls) {
            Ok(p) => self.limits.check_principal(&p).map_err(|e| e.to_status()),
            Err(_) => self.unauthenticated(request.remote_addr()),
        }
    }

    /// Spends from the limit of the peer address `peer`, for a call whose caller is not
    /// established and which is about to be audited as such.
    pub fn unauthenticated(&self, peer: Option<std::net::SocketAddr>) -> Result<(), tonic::Status> {
        self.limits.check_peer(peer.map(|a| a.ip())).map_err(|e| e.to_status())
    }
}

/// Maps client certificates to principals.
#[derive(Default)]
pub struct Identities {
    cache: RwLock<HashMap<[u8; 32], Principal>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identities")
    }
}

impl Identities {
    /// The caller of `request`.
    pub fn principal<T>(&self, request: &tonic::Request<T>, tls: bool) -> Result<Principal, ApiError> {
        if !tls {
            return Ok(Principal::anonymous());
        }
        let certs = request
            .peer_certs()
            .ok_or_else(|| ApiError::new(Reason::NoClientCertificate, "a client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| ApiError::new(Reason::NoClientCertificate, "a client certificate is required"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(digest::digest(&digest::SHA256, leaf.as_ref()).as_ref());
        if let Some(p) = self.cache.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let p = principal_of(leaf.as_ref())?;
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, p.clone());
        Ok(p)
    }
}

/// The principal a certificate names.
pub fn principal_of(der: &[u8]) -> Result<Principal, ApiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| ApiError::new(Reason::BadClientCertificate, "the client certificate cannot be parsed"))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        // Only hierarchical URIs (scheme://…, e.g. SPIFFE IDs): a URI SAN such as `dns:x`, `cn:x`
        // or `anonymous` must not pass for a principal of another form.
        if let Some(uri) = san.value.general_names.iter().find_map(|n| match n {
            GeneralName::URI(u) if u.contains("://") => Some(*u),
            _ => None,
        }) {
            return Ok(Principal::new(uri));
        }
        if let Some(dns) = san.value.general_names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        }) {
            return Ok(Principal::new(format!("dns:{dns}")));
        }
    }
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Ok(Principal::new(format!("cn:{cn}")));
    }
    Err(ApiError::new(
        Reason::NoClientIdentity,
        "the client certificate names no URI SAN, DNS SAN or common name",
    ))
}
