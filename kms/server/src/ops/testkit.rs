//! Tests only: the server's operations wired together on a SQLite store in a temporary
//! directory and the dev seal, initialized with the dev admin, without gRPC or TLS, so each
//! operation is tested by calling it.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kms_core::ids::{KeyName, Principal};
use kms_core::policy::{AccessPolicy, Grant, Operation, ReleasePolicy};

use crate::attest::Attestation;
use crate::audit::{Audit, AuditLog};
use crate::config::{AttestationConfig, Config};
use crate::identity::{Callers, Identities};
use crate::keys::{Keys, NewKey};
use crate::node::{Node, NodeEvidence};
use crate::ops::admin::AdminPlane;
use crate::ops::attestation::AttestationPlane;
use crate::ops::data::DataPlane;
use crate::seal::Seal;
use crate::storage::{KeyRow, Store};

/// One kmsd's operations on a fresh database.
pub(crate) struct Kit {
    pub(crate) store: Store,
    pub(crate) admin: AdminPlane,
    pub(crate) data: DataPlane,
    pub(crate) attestation: AttestationPlane,
    _dir: tempfile::TempDir,
}

impl Kit {
    /// A dev-sealed, initialized server whose keys may release without attestation.
    pub(crate) async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
        let store = Store::connect(&url, 4).await.unwrap();
        let seal = Arc::new(Seal::load(&store, Some(dir.path().to_path_buf()), None).await.unwrap());
        let (audit, _writer) = AuditLog::start(store.clone(), 64);
        let keys = Arc::new(Keys::new(store.clone(), seal.clone(), Duration::ZERO));
        let attestation =
            Arc::new(Attestation::new(store.clone(), seal.clone(), AttestationConfig::default(), None).unwrap());
        let defaults = Config::default();
        let callers = Callers::new(
            Arc::new(Identities::default()),
            Arc::new(crate::limits::Limits::new(&defaults.limits)),
            audit.clone(),
            true,
        );
        let node = Arc::new(
            Node::start(NodeEvidence::None, seal.unseal_public_key(), [0; 32])
                .await
                .unwrap(),
        );
        let admin = AdminPlane {
            store: store.clone(),
            seal: seal.clone(),
            keys: keys.clone(),
            audit: audit.clone(),
            allowed_countries: defaults.allowed_countries.clone(),
            window: defaults.admin_request_window,
            skew: defaults.admin_clock_skew,
            init_admins: None,
            custodians: None,
            proposal_ttl: defaults.proposal_ttl,
            allow_unattested: true,
            attestation: attestation.clone(),
            callers: callers.clone(),
            node: node.clone(),
        };
        crate::dev_init(&admin, dir.path()).await.unwrap();
        let data = DataPlane {
            node: node.clone(),
            keys,
            audit: audit.clone(),
            callers: callers.clone(),
            allow_unattested: true,
            attestation: attestation.clone(),
        };
        let attestation = AttestationPlane {
            node,
            store: store.clone(),
            seal,
            engine: attestation,
            audit,
            callers,
        };
        Self {
            store,
            admin,
            data,
            attestation,
            _dir: dir,
        }
    }

    /// Creates key `name` granting `ops` to `principal`, under `policy` (release policy JSON).
    pub(crate) async fn key(&self, name: &str, principal: &str, ops: &[Operation], policy: &str) -> Arc<KeyRow> {
        let new = NewKey {
            name: KeyName::parse(name).unwrap(),
            description: String::new(),
            tags: BTreeMap::new(),
            grants: AccessPolicy::new(vec![Grant {
                principal: principal.to_owned(),
                operations: ops.iter().copied().collect::<BTreeSet<_>>(),
            }])
            .unwrap(),
            policy: ReleasePolicy::parse(policy).unwrap(),
        };
        let mut audit = Audit::new("admin:test", "admin.create_key");
        self.admin.create_key(new, &mut audit).await.unwrap()
    }
}

/// A principal.
pub(crate) fn who(name: &str) -> Principal {
    Principal::new(name)
}

/// A release policy that releases plaintext without attestation.
pub(crate) const UNATTESTED: &str = r#"{"version":1,"attestation":"none"}"#;
