//! Admin identities: generating a key file, initializing a server with its first admins, adding
//! and listing admins. Public files are checked locally before anything is signed. It must never
//! print or send the admin's private key: only the public half leaves the key file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kms_core::ids::AdminId;
use kms_core::jurisdiction::Country;
use kms_core::keyfile::{AdminKeyFile, AdminPublic};
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use serde_json::json;

use kms_proto::v1::quorum_operation::Operation as QOp;

use crate::cli::{Global, InitArgs, ProposeArgs, SealArg};
use crate::client::Server;
use crate::credential::{self, Credential, TokenArgs};
use crate::error::Error;
use crate::files;
use crate::output::{self, Printer};
use crate::proposal;

/// `kmsctl admin keygen --hsm`: both keys inside the token, only the public file written.
pub(crate) fn keygen_hsm(g: &Global, p: &Printer, id: &AdminId, country: &Country, out: &Path) -> Result<(), Error> {
    let token = TokenArgs::from_global(g)?.ok_or_else(|| {
        Error::usage("--hsm needs --hsm-module, --hsm-token and --hsm-pin (the token to generate in)")
    })?;
    if g.admin_key.is_some() {
        return Err(Error::usage(
            "--hsm generates keys in a token: --admin-key does not apply",
        ));
    }
    // Checked before the token is touched, so a refusal leaves nothing behind.
    if out.exists() {
        return Err(Error::local(format!(
            "{} exists; refusing to overwrite it",
            out.display()
        )));
    }
    let label = g.hsm_key.clone().unwrap_or_else(|| id.to_string());
    let public = credential::generate_in_token(
        &token,
        &label,
        AdminPublic {
            admin_id: id.to_string(),
            country: country.as_str().to_owned(),
            signing_public_key: String::new(),
            encryption_public_key: String::new(),
        },
    )?;
    let public_json = serde_json::to_string_pretty(&public).map_err(|e| Error::local(e.to_string()))? + "\n";
    files::create_new(out, public_json.as_bytes(), false)?;
    p.emit(
        json!({
            "admin_id": public.admin_id,
            "country": public.country,
            "public_file": out,
            "signing_key_label": format!("{label}{}", credential::SIGN_SUFFIX),
            "share_key_label": format!("{label}{}", credential::SHARE_SUFFIX),
            "signing_public_key": public.signing_public_key,
            "encryption_public_key": public.encryption_public_key,
            "fingerprint": fingerprint_of(&public, out)?,
        }),
        || {
            format!(
                "admin {} ({})\nkeys in the token (non-extractable): {label}{} (signing), {label}{} (share)\npublic file: {} (give it to whoever runs `kmsctl init` or `kmsctl admins add`; pass it as --admin-pub{})\nfingerprint: {} (what a new server's admin.init_admins pins)",
                public.admin_id,
                public.country,
                credential::SIGN_SUFFIX,
                credential::SHARE_SUFFIX,
                out.display(),
                if label == public.admin_id { String::new() } else { format!(" with --hsm-key {label}") },
                fingerprint_of(&public, out).unwrap_or_default()
            )
        },
    )
}

fn fingerprint_of(public: &AdminPublic, from: &Path) -> Result<String, Error> {
    public.fingerprint().map_err(|e| Error::file("use", from, e))
}

/// `kmsctl admin fingerprint`.
pub(crate) fn fingerprint(p: &Printer, public_files: &[PathBuf]) -> Result<(), Error> {
    let mut out = Vec::new();
    for path in public_files {
        let public = files::admin_public(path)?;
        out.push((public.admin_id.clone(), fingerprint_of(&public, path)?));
    }
    p.emit(
        json!(out
            .iter()
            .map(|(id, f)| json!({ "admin_id": id, "fingerprint": f }))
            .collect::<Vec<_>>()),
        || {
            let lines: Vec<String> = out.iter().map(|(id, f)| format!("{f}  {id}")).collect();
            format!(
                "{}\n(list them in the server's configuration: [admin] init_admins = [\"sha256:...\", ...])",
                lines.join("\n")
            )
        },
    )
}

/// `kmsctl admin keygen`.
pub(crate) fn keygen(p: &Printer, id: AdminId, country: Country, out: &Path) -> Result<(), Error> {
    let public_path = files::public_path(out);
    // Checked before the secret file is written, so a refusal leaves nothing behind.
    if public_path.exists() {
        return Err(Error::local(format!(
            "{} exists; refusing to overwrite it",
            public_path.display()
        )));
    }
    let key = AdminKeyFile::generate(id, country).map_err(|e| Error::local(format!("cannot generate keys: {e}")))?;
    let public = key.public();
    let public_json = serde_json::to_string_pretty(&public).map_err(|e| Error::local(e.to_string()))? + "\n";
    files::create_new(out, key.encode().expose_secret(), true)?;
    if let Err(e) = files::create_new(&public_path, public_json.as_bytes(), false) {
        // The key file was created by this run (create_new), so removing it loses nothing.
        let _ = std::fs::remove_file(out);
        return Err(e.into());
    }
    p.emit(
        json!({
            "admin_id": public.admin_id,
            "country": public.country,
            "key_file": out,
            "public_file": public_path,
            "signing_public_key": public.signing_public_key,
            "encryption_public_key": public.encryption_public_key,
            "fingerprint": fingerprint_of(&public, &public_path)?,
        }),
        || {
            format!(
                "admin {} ({})\nsecret key file: {} (mode 0600: keep it private, pass it as --admin-key)\npublic file:     {} (give it to whoever runs `kmsctl init` or `kmsctl admins add`)\nfingerprint:     {} (what a new server's admin.init_admins pins)",
                public.admin_id,
                public.country,
                out.display(),
                public_path.display(),
                fingerprint_of(&public, &public_path).unwrap_or_default()
            )
        },
    )
}

fn wire_admin(public: &AdminPublic, custodian: bool, from: &Path) -> Result<pb::NewAdmin, Error> {
    let bad_hex = |e: hex::FromHexError| Error::file("use", from, e);
    Ok(pb::NewAdmin {
        id: public.admin_id.clone(),
        country: public.country.clone(),
        signing_public_key: hex::decode(&public.signing_public_key).map_err(bad_hex)?,
        encryption_public_key: hex::decode(&public.encryption_public_key).map_err(bad_hex)?,
        custodian,
    })
}

/// `kmsctl init`.
pub(crate) async fn init(g: &Global, p: &Printer, args: &InitArgs) -> Result<(), Error> {
    let key = Credential::load(g)?;
    let publics: Vec<(PathBuf, AdminPublic)> = args
        .admins
        .iter()
        .map(|f| Ok((f.clone(), files::admin_public(f)?)))
        .collect::<Result<_, Error>>()?;

    let mut ids = BTreeSet::new();
    for (f, a) in &publics {
        if !ids.insert(a.admin_id.as_str()) {
            return Err(Error::usage(format!(
                "admin {} is given twice (again in {})",
                a.admin_id,
                f.display()
            )));
        }
    }
    for n in &args.non_custodian {
        if !ids.contains(n.as_str()) {
            return Err(Error::usage(format!(
                "--non-custodian {n}: no --admin file names this admin"
            )));
        }
    }
    let me = key.admin_id();
    let (my_file, my_public) = publics.iter().find(|(_, a)| a.admin_id == me).ok_or_else(|| {
        Error::usage(format!(
            "the signing credential is admin {me}, who is not among the --admin files; init must be signed by one of the admins it names"
        ))
    })?;
    if !key.matches(my_public)? {
        return Err(Error::local(format!(
            "{} has other keys than the signing credential (--admin-key or the HSM) for admin {me}",
            my_file.display()
        )));
    }

    let is_custodian = |id: &str| !args.non_custodian.iter().any(|n| n.as_str() == id);
    let custodians = publics.iter().filter(|(_, a)| is_custodian(&a.admin_id)).count();
    let (seal, threshold) = match args.seal {
        SealArg::Shamir => {
            let m = args.threshold.unwrap_or(0);
            if m == 0 || m as usize > custodians {
                return Err(Error::usage(format!(
                    "--threshold must be between 1 and the number of custodians ({custodians}), not {m}"
                )));
            }
            (pb::SealKind::Shamir, m)
        }
        SealArg::Dev => {
            if args.threshold.is_some() {
                return Err(Error::usage("--threshold applies to the shamir seal only"));
            }
            (pb::SealKind::Dev, 0)
        }
    };
    let admins = publics
        .iter()
        .map(|(f, a)| wire_admin(a, is_custodian(&a.admin_id), f))
        .collect::<Result<Vec<_>, _>>()?;
    let admin_ids: Vec<String> = admins.iter().map(|a| a.id.clone()).collect();
    let op = pb::InitOp {
        seal: seal as i32,
        threshold,
        admins,
        approval_quorum: args.quorum,
    };

    let nodes = crate::node::required_nodes(g, "init")?;
    let server = Server::connect(g).await?.trusting(nodes);
    let nodes = server.nodes("init").await?;
    // The node is verified before anything is sent, and what is recorded (check value,
    // deployment) is read from the status it signs afterwards, not from the Init answer.
    let (node, _) = crate::node::verified_status(&server, nodes).await?;
    let signer = key.signer();
    let response = server.admin_call::<pb::InitResponse>(&signer, Op::Init(op)).await?;
    let (after, status) = crate::node::verified_status(&server, nodes).await?;
    let answered = response.status.unwrap_or_default();
    if after.public_key != node.public_key
        || status.key_check_value != answered.key_check_value
        || status.deployment_id != answered.deployment_id
    {
        let what = "the Init answer is not what the verified node signed afterwards (another node answered, or something between rewrote it): do not record its check value; ask the operator".to_owned();
        return Err(Error::Verification {
            json: json!({ "ok": false, "reason": "node_statement_mismatch", "message": what }),
            what,
        });
    }
    let kcv = hex::encode(&status.key_check_value);
    p.emit(
        json!({
            "initialized": true,
            "admins": admin_ids,
            "custodians": custodians,
            "status": output::seal_status_json(&status),
        }),
        || {
            let mut s = match seal {
                pb::SealKind::Shamir => format!(
                    "initialized: shamir seal, {threshold} of {custodians} custodians' shares unseal; admins: {}\n",
                    admin_ids.join(", ")
                ),
                _ => format!(
                    "initialized: dev seal (root key in the server's data directory; not for production); admins: {}\n",
                    admin_ids.join(", ")
                ),
            };
            if !kcv.is_empty() {
                s.push_str(&format!(
                    "key check value: {kcv}\n  custodians: record it; `kmsctl unseal --expect-kcv {kcv}` refuses a server whose root key differs\n"
                ));
            }
            if !status.deployment_id.is_empty() {
                s.push_str(&format!(
                    "deployment: {}\n  every signed request names it; pin it with --deployment (KMSCTL_DEPLOYMENT)\n",
                    status.deployment_id
                ));
            }
            s.push_str(if status.sealed { "state: sealed\n" } else { "state: unsealed\n" });
            s
        },
    )
}

/// `kmsctl admins add`.
pub(crate) async fn add(
    g: &Global,
    p: &Printer,
    public_file: &Path,
    non_custodian: bool,
    propose: ProposeArgs,
) -> Result<(), Error> {
    let public = files::admin_public(public_file)?;
    let new = wire_admin(&public, !non_custodian, public_file)?;
    if propose.propose {
        let op = QOp::AddAdmin(pb::AddAdminOp { admin: Some(new) });
        return proposal::propose(g, p, op, propose.ttl).await;
    }
    let key = Credential::load(g)?;
    let server = Server::connect(g).await?;
    let signer = key.signer();
    let admin = server
        .admin_call::<pb::Admin>(&signer, Op::AddAdmin(pb::AddAdminOp { admin: Some(new) }))
        .await?;
    p.emit(output::admin_json(&admin), || {
        format!(
            "added admin {} ({}, {})",
            admin.id,
            admin.country,
            if admin.custodian {
                "custodian"
            } else {
                "not a custodian"
            }
        )
    })
}

/// `kmsctl admins remove`: always a proposal.
pub(crate) async fn remove(
    g: &Global,
    p: &Printer,
    admin_id: &AdminId,
    reason: &str,
    ttl: Option<u32>,
) -> Result<(), Error> {
    let op = QOp::RemoveAdmin(pb::RemoveAdminOp {
        admin_id: admin_id.to_string(),
        reason: reason.to_owned(),
    });
    proposal::propose(g, p, op, ttl).await
}

/// `kmsctl admins list`.
pub(crate) async fn list(g: &Global, p: &Printer) -> Result<(), Error> {
    let key = Credential::load(g)?;
    let server = Server::connect(g).await?;
    let signer = key.signer();
    let response = server
        .admin_call::<pb::ListAdminsResponse>(&signer, Op::ListAdmins(pb::ListAdminsOp { include_removed: false }))
        .await?;
    p.emit(
        json!({ "admins": response.admins.iter().map(output::admin_json).collect::<Vec<_>>() }),
        || output::admins_table(&response.admins),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_matches_only_its_own_public_half() {
        let alice = AdminKeyFile::generate(AdminId::parse("alice").unwrap(), Country::parse("DE").unwrap()).unwrap();
        let other = AdminKeyFile::generate(AdminId::parse("alice").unwrap(), Country::parse("DE").unwrap()).unwrap();
        let other = other.public();
        let public = alice.public();
        let alice = Credential::KeyFile(Box::new(alice));
        assert!(alice.matches(&public).unwrap());
        assert!(!alice.matches(&other).unwrap());
        let wire = wire_admin(&public, true, Path::new("a")).unwrap();
        assert_eq!(wire.signing_public_key.len(), 65);
        assert!(wire.custodian);
    }
}
