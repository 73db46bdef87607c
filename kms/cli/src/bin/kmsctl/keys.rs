//! Key management (signed admin calls): create, describe, list and the lifecycle changes. The
//! server is the authority on every rule (names, policies, transitions); this module only
//! shapes the requests and shows the answers. It must never handle key material.

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use serde_json::{json, Value};

use crate::args::{grants_to_wire, pairs_to_map};
use kms_proto::v1::quorum_operation::Operation as QOp;

use crate::cli::{CreateKeyArgs, Global, KeyCommand, PolicyInput, ProposeArgs};
use crate::client::Server;
use crate::credential::Credential;
use crate::error::Error;
use crate::files;
use crate::output::{self, Printer};
use crate::proposal;

/// The release policy text from --release-policy or --release-policy-file, checked to be JSON
/// so a typo is caught before anything is signed. The server checks what it means.
fn release_policy(args: &CreateKeyArgs) -> Result<String, Error> {
    if let Some(text) = &args.release_policy {
        serde_json::from_str::<Value>(text).map_err(|e| Error::usage(format!("--release-policy is not JSON: {e}")))?;
        return Ok(text.clone());
    }
    if let Some(path) = &args.release_policy_file {
        let text = files::read_text(path)?;
        serde_json::from_str::<Value>(&text).map_err(|e| Error::file("use", path, format!("not JSON: {e}")))?;
        return Ok(text);
    }
    Ok(String::new())
}

/// The new release policy for `key set-release-policy`: --policy, or --file (`-` for standard
/// input), checked to be JSON before anything is signed (a bad --policy is a usage error, exit 2;
/// a bad file a local one, exit 4, as for `key create`). Unlike at creation, an empty document is
/// refused here: it would silently mean the default policy.
fn new_release_policy(input: &PolicyInput) -> Result<String, Error> {
    let example = r#"give the whole policy, e.g. {"version":1,"attestation":"required"}"#;
    match (&input.policy, &input.file) {
        (Some(text), _) => {
            if text.trim().is_empty() {
                return Err(Error::usage(format!("--policy is empty; {example}")));
            }
            serde_json::from_str::<Value>(text).map_err(|e| Error::usage(format!("--policy is not JSON: {e}")))?;
            Ok(text.clone())
        }
        (None, Some(path)) => {
            let bytes = files::read_or_stdin(path)?;
            let text = String::from_utf8(bytes).map_err(|_| Error::file("use", path, "not UTF-8 text"))?;
            if text.trim().is_empty() {
                return Err(Error::file("use", path, format!("empty; {example}")));
            }
            serde_json::from_str::<Value>(&text).map_err(|e| Error::file("use", path, format!("not JSON: {e}")))?;
            Ok(text)
        }
        // clap's argument group requires one of the two.
        (None, None) => Err(Error::usage("give --policy or --file")),
    }
}

/// `kmsctl key ...`.
pub(crate) async fn run(g: &Global, p: &Printer, command: &KeyCommand) -> Result<(), Error> {
    // Arguments are checked before the key file is read or the server contacted.
    let op = match command {
        KeyCommand::Create(args) => Op::CreateKey(pb::CreateKeyOp {
            name: args.name.clone(),
            description: args.description.clone(),
            tags: pairs_to_map(&args.tags, "--tag")?,
            grants: grants_to_wire(&args.grants),
            release_policy: release_policy(args)?,
        }),
        KeyCommand::Describe { key } => Op::DescribeKey(pb::DescribeKeyOp { key: key.clone() }),
        KeyCommand::List {
            page_size,
            page_token,
            all,
        } => {
            return list(
                g,
                p,
                page_size.unwrap_or(0),
                page_token.clone().unwrap_or_default(),
                *all,
            )
            .await;
        }
        KeyCommand::Rotate { key } => Op::RotateKey(pb::RotateKeyOp { key: key.clone() }),
        KeyCommand::Enable { key } => Op::EnableKey(pb::EnableKeyOp { key: key.clone() }),
        KeyCommand::Disable { key } => Op::DisableKey(pb::DisableKeyOp { key: key.clone() }),
        KeyCommand::ScheduleDeletion { key, days, .. } => Op::ScheduleKeyDeletion(pb::ScheduleKeyDeletionOp {
            key: key.clone(),
            pending_window_days: *days,
        }),
        KeyCommand::CancelDeletion { key } => Op::CancelKeyDeletion(pb::CancelKeyDeletionOp { key: key.clone() }),
        KeyCommand::SetReleasePolicy(args) => Op::SetReleasePolicy(pb::SetReleasePolicyOp {
            key: args.key.clone(),
            release_policy: new_release_policy(&args.policy)?,
        }),
    };
    // Quorum operations, when asked, are proposed instead of run.
    let propose = match command {
        KeyCommand::ScheduleDeletion { propose, .. } => *propose,
        KeyCommand::SetReleasePolicy(args) => args.propose,
        _ => ProposeArgs::default(),
    };
    if propose.propose {
        let q = match op {
            Op::ScheduleKeyDeletion(o) => QOp::ScheduleKeyDeletion(o),
            Op::SetReleasePolicy(o) => QOp::SetReleasePolicy(o),
            // Only the two quorum operations above can carry --propose.
            _ => return Err(Error::usage("--propose applies to quorum operations only")),
        };
        return proposal::propose(g, p, q, propose.ttl).await;
    }
    let admin_key = Credential::load(g)?;
    let signer = admin_key.signer();
    let server = Server::connect(g).await?;
    let k = match op {
        o @ Op::CreateKey(_) => server.admin_call::<pb::KeyMetadata>(&signer, o).await?,
        o @ Op::DescribeKey(_) => server.admin_call::<pb::KeyMetadata>(&signer, o).await?,
        o @ Op::RotateKey(_) => server.admin_call::<pb::KeyMetadata>(&signer, o).await?,
        o @ Op::EnableKey(_) => server.admin_call::<pb::KeyMetadata>(&signer, o).await?,
        o @ Op::DisableKey(_) => server.admin_call::<pb::KeyMetadata>(&signer, o).await?,
        o @ Op::ScheduleKeyDeletion(_) => server.admin_call::<pb::KeyMetadata>(&signer, o).await?,
        o @ Op::CancelKeyDeletion(_) => server.admin_call::<pb::KeyMetadata>(&signer, o).await?,
        o @ Op::SetReleasePolicy(_) => server.admin_call::<pb::KeyMetadata>(&signer, o).await?,
        // Only key operations are built above.
        _ => return Err(Error::usage("not a key command")),
    };
    p.emit(output::key_json(&k), || match command {
        KeyCommand::Create(_) => format!("created key {} ({})\n{}", k.name, k.id, output::key_human(&k)),
        KeyCommand::Rotate { .. } => format!("rotated {} ({}): new blobs use version {}", k.name, k.id, k.latest_version),
        KeyCommand::Enable { .. } => format!("enabled {} ({})", k.name, k.id),
        KeyCommand::Disable { .. } => format!(
            "disabled {} ({}): data-plane calls with it are refused until `kmsctl key enable`",
            k.name, k.id
        ),
        KeyCommand::ScheduleDeletion { .. } => format!(
            "{} ({}) is pending deletion: its material is destroyed at {} unless `kmsctl key cancel-deletion` runs first",
            k.name,
            k.id,
            output::time(k.deletion_unix_ms)
        ),
        KeyCommand::CancelDeletion { .. } => format!(
            "deletion of {} ({}) cancelled; the key is {} (`kmsctl key enable` to use it again)",
            k.name,
            k.id,
            output::key_state(k.state)
        ),
        KeyCommand::SetReleasePolicy(_) => format!(
            "release policy of {} ({}) is now version {}, from the next release on:\n{}",
            k.name, k.id, k.release_policy_version, k.release_policy
        ),
        _ => output::key_human(&k),
    })
}

async fn list(g: &Global, p: &Printer, page_size: u32, mut page_token: String, all: bool) -> Result<(), Error> {
    let admin_key = Credential::load(g)?;
    let signer = admin_key.signer();
    let server = Server::connect(g).await?;
    let mut keys = Vec::new();
    let next = loop {
        let op = Op::ListKeys(pb::ListKeysOp {
            page_size,
            page_token: std::mem::take(&mut page_token),
        });
        let page = server.admin_call::<pb::ListKeysResponse>(&signer, op).await?;
        keys.extend(page.keys);
        if !all || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        page_token = page.next_page_token;
    };
    let doc = json!({
        "keys": keys.iter().map(output::key_json).collect::<Vec<_>>(),
        "next_page_token": (!next.is_empty()).then_some(next.as_str()),
    });
    p.emit(doc, || {
        let mut out = output::keys_table(&keys);
        if !next.is_empty() {
            out.push_str(&format!(
                "more keys: `kmsctl key list --page-token {next}` (or --all)\n"
            ));
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(policy: Option<&str>) -> CreateKeyArgs {
        CreateKeyArgs {
            name: "n".into(),
            description: String::new(),
            tags: vec![],
            grants: vec![],
            release_policy: policy.map(str::to_owned),
            release_policy_file: None,
        }
    }

    #[test]
    fn release_policies_must_be_json() {
        assert_eq!(release_policy(&args(None)).unwrap(), "");
        let p = r#"{"version":1,"attestation":"none"}"#;
        assert_eq!(release_policy(&args(Some(p))).unwrap(), p);
        let e = release_policy(&args(Some("{version:1"))).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
    }

    #[test]
    fn new_release_policies_must_be_json_and_not_empty() {
        let input = |policy: &str| PolicyInput {
            policy: Some(policy.to_owned()),
            file: None,
        };
        let p = r#"{"version":1,"attestation":"required","allOf":[{"claim":"jurisdiction","equals":"EU"}]}"#;
        assert_eq!(new_release_policy(&input(p)).unwrap(), p);
        for bad in ["", "  ", "{\"version\":1", "version=1"] {
            let e = new_release_policy(&input(bad)).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{bad}");
            assert!(e.to_string().starts_with("--policy is"), "{e}");
        }
        let from_file = |path: &std::path::Path| {
            new_release_policy(&PolicyInput {
                policy: None,
                file: Some(path.to_owned()),
            })
        };
        let missing = from_file(std::path::Path::new("/nonexistent/policy.json")).unwrap_err();
        assert_eq!(missing.exit_code(), crate::error::exit::LOCAL);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, p).unwrap();
        assert_eq!(from_file(&path).unwrap(), p);
        std::fs::write(&path, "{version").unwrap();
        let e = from_file(&path).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::LOCAL);
        assert!(e.to_string().contains("not JSON"), "{e}");
    }
}
