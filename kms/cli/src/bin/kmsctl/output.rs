//! What `kmsctl` prints: one JSON document on stdout with `--output json`, short lines otherwise,
//! and errors (with their hint) on stderr, through kms-client's `Printer`. Renders wire types for
//! people and scripts. It must
//! never print an admin's private key or a root-key share; data-key plaintext only where the
//! command was asked for it.

use std::fmt::Write as _;

use base64::Engine as _;
use kms_proto::v1 as pb;
use serde_json::{json, Value};

pub(crate) use kms_client::cli::report::{stdout, time};
pub(crate) use kms_client::cli::{Printer, B64};

use crate::args::operation_name;

pub(crate) fn seal_kind(kind: i32) -> &'static str {
    match pb::SealKind::try_from(kind) {
        Ok(pb::SealKind::Shamir) => "shamir",
        Ok(pb::SealKind::Dev) => "dev",
        Ok(pb::SealKind::Pkcs11) => "pkcs11",
        _ => "none",
    }
}

pub(crate) fn key_state(state: i32) -> &'static str {
    match pb::KeyState::try_from(state) {
        Ok(pb::KeyState::Enabled) => "enabled",
        Ok(pb::KeyState::Disabled) => "disabled",
        Ok(pb::KeyState::PendingDeletion) => "pending_deletion",
        Ok(pb::KeyState::Destroyed) => "destroyed",
        _ => "unknown",
    }
}

pub(crate) fn seal_status_json(s: &pb::SealStatus) -> Value {
    json!({
        "initialized": s.initialized,
        "sealed": s.sealed,
        "seal": seal_kind(s.seal),
        "threshold": s.threshold,
        "progress": s.progress,
        "key_check_value": hex::encode(&s.key_check_value),
        "unseal_public_key": hex::encode(&s.unseal_public_key),
        "root_generation": s.root_generation,
        "approval_quorum": s.approval_quorum,
        "deployment_id": s.deployment_id,
        "state_version": s.state_version,
        "integrity_alarm": (!s.integrity_alarm.is_empty()).then_some(s.integrity_alarm.as_str()),
        "rotation": s.rotation.as_ref().map(|r| json!({
            "to_generation": r.to_generation,
            "seal": seal_kind(r.seal),
            "remaining": r.remaining,
        })),
    })
}

pub(crate) fn seal_status_human(s: &pb::SealStatus) -> String {
    if !s.initialized {
        return "not initialized (run `kmsctl init`)\n".into();
    }
    let mut out = String::new();
    let state = if !s.sealed {
        "unsealed".to_owned()
    } else if s.seal == pb::SealKind::Shamir as i32 {
        format!("sealed ({}/{} shares submitted)", s.progress, s.threshold)
    } else {
        "sealed".to_owned()
    };
    let _ = writeln!(out, "state:           {state}");
    if !s.integrity_alarm.is_empty() {
        let _ = writeln!(
            out,
            "INTEGRITY ALARM: {} (nothing is served until the database is restored and kmsd restarted)",
            s.integrity_alarm
        );
    }
    if !s.deployment_id.is_empty() {
        let _ = writeln!(out, "deployment:      {}", s.deployment_id);
    }
    let _ = write!(out, "seal:            {}", seal_kind(s.seal));
    if s.seal == pb::SealKind::Shamir as i32 {
        let _ = write!(out, ", {} shares unseal", s.threshold);
    }
    out.push('\n');
    if !s.key_check_value.is_empty() {
        let _ = writeln!(out, "key check value: {}", hex::encode(&s.key_check_value));
    }
    if s.root_generation != 0 {
        let _ = writeln!(out, "root generation: {}", s.root_generation);
    }
    if s.approval_quorum != 0 {
        let _ = writeln!(out, "approval quorum: {} admins", s.approval_quorum);
    }
    if s.state_version != 0 {
        let _ = writeln!(out, "state version:   {}", s.state_version);
    }
    if let Some(r) = &s.rotation {
        let _ = writeln!(
            out,
            "root rotation:   to generation {} ({} seal), {} secrets left to re-wrap",
            r.to_generation,
            seal_kind(r.seal),
            r.remaining
        );
    }
    out
}

/// A JSON document the server sent as text, as JSON (as a string if it is not JSON).
fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::from(text))
}

fn grants_json(grants: &[pb::Grant]) -> Value {
    grants
        .iter()
        .map(|g| {
            json!({
                "principal": g.principal,
                "operations": g.operations.iter().map(|o| operation_name(*o)).collect::<Vec<_>>(),
            })
        })
        .collect()
}

pub(crate) fn key_json(k: &pb::KeyMetadata) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "description": k.description,
        "state": key_state(k.state),
        "latest_version": k.latest_version,
        "created_unix_ms": k.created_unix_ms,
        "deletion_unix_ms": (k.deletion_unix_ms != 0).then_some(k.deletion_unix_ms),
        "tags": k.tags,
        "grants": grants_json(&k.grants),
        "release_policy": json_or_text(&k.release_policy),
        "release_policy_version": k.release_policy_version,
    })
}

pub(crate) fn key_human(k: &pb::KeyMetadata) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "name:            {}", k.name);
    let _ = writeln!(out, "id:              {}", k.id);
    let _ = writeln!(out, "state:           {}", key_state(k.state));
    if k.deletion_unix_ms != 0 {
        let _ = writeln!(out, "destroyed at:    {}", time(k.deletion_unix_ms));
    }
    let _ = writeln!(out, "latest version:  {}", k.latest_version);
    let _ = writeln!(out, "created:         {}", time(k.created_unix_ms));
    if !k.description.is_empty() {
        let _ = writeln!(out, "description:     {}", k.description);
    }
    if !k.tags.is_empty() {
        let tags: Vec<String> = k.tags.iter().map(|(t, v)| format!("{t}={v}")).collect();
        let _ = writeln!(out, "tags:            {}", tags.join(", "));
    }
    if k.grants.is_empty() {
        let _ = writeln!(out, "grants:          none");
    } else {
        let _ = writeln!(out, "grants:");
        for g in &k.grants {
            let ops: Vec<String> = g.operations.iter().map(|o| operation_name(*o)).collect();
            let _ = writeln!(out, "  {}: {}", g.principal, ops.join(", "));
        }
    }
    let _ = writeln!(
        out,
        "release policy:  {} (version {})",
        k.release_policy, k.release_policy_version
    );
    out
}

/// One line per key: id, state, version, name.
pub(crate) fn keys_table(keys: &[pb::KeyMetadata]) -> String {
    if keys.is_empty() {
        return "no keys\n".into();
    }
    let mut out = format!("{:<34}  {:<16}  {:>7}  NAME\n", "ID", "STATE", "VERSION");
    for k in keys {
        let _ = writeln!(
            out,
            "{:<34}  {:<16}  {:>7}  {}",
            k.id,
            key_state(k.state),
            k.latest_version,
            k.name
        );
    }
    out
}

pub(crate) fn admin_json(a: &pb::Admin) -> Value {
    json!({
        "id": a.id,
        "country": a.country,
        "custodian": a.custodian,
        "signing_public_key": hex::encode(&a.signing_public_key),
        "created_unix_ms": a.created_unix_ms,
    })
}

pub(crate) fn admins_table(admins: &[pb::Admin]) -> String {
    let width = admins.iter().map(|a| a.id.len()).max().unwrap_or(0).max(2);
    let mut out = format!("{:<width$}  COUNTRY  CUSTODIAN  ADDED\n", "ID");
    for a in admins {
        let _ = writeln!(
            out,
            "{:<width$}  {:<7}  {:<9}  {}",
            a.id,
            a.country,
            if a.custodian { "yes" } else { "no" },
            time(a.created_unix_ms)
        );
    }
    out
}

pub(crate) fn hardware_kind(kind: i32) -> &'static str {
    match pb::HardwareKind::try_from(kind) {
        Ok(pb::HardwareKind::Snp) => "snp",
        Ok(pb::HardwareKind::Tpm) => "tpm",
        _ => "unknown",
    }
}

pub(crate) fn hardware_status(status: i32) -> &'static str {
    match pb::HardwareStatus::try_from(status) {
        Ok(pb::HardwareStatus::Active) => "active",
        Ok(pb::HardwareStatus::Revoked) => "revoked",
        _ => "unknown",
    }
}

/// A long hex identity shortened for a line: its first 16 and last 8 digits.
pub(crate) fn abbreviate(hex: &str) -> String {
    match (hex.get(..16), hex.get(hex.len().saturating_sub(8)..)) {
        (Some(head), Some(tail)) if hex.len() > 32 => format!("{head}…{tail}"),
        _ => hex.to_owned(),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The full registry entry. Certificates are base64 (DER), like blobs; identities hex, as the
/// server writes them; an empty field of the other kind, or of a machine not revoked, is null.
pub(crate) fn hardware_json(h: &pb::Hardware) -> Value {
    let snp = h.kind == pb::HardwareKind::Snp as i32;
    let revoked = h.revoked_unix_ms != 0;
    json!({
        "id": h.id,
        "kind": hardware_kind(h.kind),
        "status": hardware_status(h.status),
        "country": h.country,
        "jurisdiction": h.jurisdiction,
        "site": h.site,
        "operator": h.operator,
        "description": h.description,
        "snp_chip_id": non_empty(&h.snp_chip_id),
        "snp_accept_vlek": snp.then_some(h.snp_accept_vlek),
        "tpm_ek_digest": non_empty(&h.tpm_ek_digest),
        "tpm_ak_name": non_empty(&h.tpm_ak_name),
        "tpm_ek_certificate": (!h.tpm_ek_certificate.is_empty()).then(|| B64.encode(&h.tpm_ek_certificate)),
        "enrolled_unix_ms": h.enrolled_unix_ms,
        "enrolled_by": h.enrolled_by,
        "revoked_unix_ms": revoked.then_some(h.revoked_unix_ms),
        "revoked_by": non_empty(&h.revoked_by),
        "revocation_reason": non_empty(&h.revocation_reason),
        "enrollment_record": non_empty(&h.enrollment_record).map(json_or_text),
    })
}

fn country_human(h: &pb::Hardware) -> String {
    if h.jurisdiction.is_empty() {
        format!("{} (no jurisdiction)", h.country)
    } else {
        format!("{} (jurisdiction {})", h.country, h.jurisdiction)
    }
}

/// A registry entry for people: the chip id abbreviated, TPM identities in full (an admin
/// compares them with what the machine showed).
pub(crate) fn hardware_human(h: &pb::Hardware) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id:              {}", h.id);
    let _ = writeln!(out, "kind:            {}", hardware_kind(h.kind));
    let _ = writeln!(out, "status:          {}", hardware_status(h.status));
    let _ = writeln!(out, "country:         {}", country_human(h));
    let _ = writeln!(out, "site:            {}", h.site);
    let _ = writeln!(out, "operator:        {}", h.operator);
    if !h.description.is_empty() {
        let _ = writeln!(out, "description:     {}", h.description);
    }
    if !h.snp_chip_id.is_empty() {
        let _ = writeln!(out, "chip id:         {}", abbreviate(&h.snp_chip_id));
    }
    if h.kind == pb::HardwareKind::Snp as i32 {
        let _ = writeln!(
            out,
            "VLEK reports:    {}",
            if h.snp_accept_vlek { "accepted" } else { "refused" }
        );
    }
    if !h.tpm_ek_digest.is_empty() {
        let _ = writeln!(out, "EK digest:       {}", h.tpm_ek_digest);
    }
    if !h.tpm_ak_name.is_empty() {
        let _ = writeln!(out, "AK name:         {}", h.tpm_ak_name);
    }
    if !h.tpm_ek_certificate.is_empty() {
        let _ = writeln!(
            out,
            "EK certificate:  {} bytes (DER; `--output json` shows it)",
            h.tpm_ek_certificate.len()
        );
    }
    let _ = writeln!(
        out,
        "enrolled:        {} by {}",
        time(h.enrolled_unix_ms),
        h.enrolled_by
    );
    if h.revoked_unix_ms != 0 {
        let _ = writeln!(out, "revoked:         {} by {}", time(h.revoked_unix_ms), h.revoked_by);
        let _ = writeln!(out, "reason:          {}", h.revocation_reason);
    }
    if !h.enrollment_record.is_empty() {
        let _ = writeln!(out, "enrolment record: {}", h.enrollment_record);
    }
    out
}

/// One line per machine: id, kind, status, country, identity (abbreviated), site, operator.
pub(crate) fn hardware_table(machines: &[pb::Hardware]) -> String {
    if machines.is_empty() {
        return "no hardware enrolled\n".into();
    }
    let identity = |h: &pb::Hardware| {
        if !h.snp_chip_id.is_empty() {
            format!("chip {}", abbreviate(&h.snp_chip_id))
        } else if !h.tpm_ek_digest.is_empty() {
            format!("ek {}", abbreviate(&h.tpm_ek_digest))
        } else {
            "-".to_owned()
        }
    };
    let rows: Vec<(String, String)> = machines.iter().map(|h| (identity(h), h.site.clone())).collect();
    let id_w = rows.iter().map(|(i, _)| i.chars().count()).max().unwrap_or(0).max(8);
    let site_w = rows.iter().map(|(_, s)| s.chars().count()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "{:<35}  {:<4}  {:<7}  {:<7}  {:<id_w$}  {:<site_w$}  OPERATOR\n",
        "ID", "KIND", "STATUS", "COUNTRY", "IDENTITY", "SITE"
    );
    for (h, (ident, site)) in machines.iter().zip(&rows) {
        let country = if h.jurisdiction.is_empty() {
            h.country.clone()
        } else {
            format!("{}/{}", h.country, h.jurisdiction)
        };
        let _ = writeln!(
            out,
            "{:<35}  {:<4}  {:<7}  {:<7}  {:<id_w$}  {:<site_w$}  {}",
            h.id,
            hardware_kind(h.kind),
            hardware_status(h.status),
            country,
            ident,
            site,
            h.operator
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_render_for_people_and_scripts() {
        let k = pb::KeyMetadata {
            id: "k-00000000000000000000000000000001".into(),
            name: "payments".into(),
            state: pb::KeyState::Enabled as i32,
            latest_version: 2,
            grants: vec![pb::Grant {
                principal: "spiffe://eu/pay".into(),
                operations: vec![pb::Operation::Encrypt as i32, pb::Operation::Decrypt as i32],
            }],
            release_policy: r#"{"version":1,"attestation":"required"}"#.into(),
            ..Default::default()
        };
        let human = key_human(&k);
        assert!(human.contains("state:           enabled"), "{human}");
        assert!(human.contains("  spiffe://eu/pay: encrypt, decrypt"), "{human}");
        let j = key_json(&k);
        assert_eq!(j["release_policy"]["attestation"], "required");
        assert_eq!(j["grants"][0]["operations"][1], "decrypt");
        assert_eq!(j["deletion_unix_ms"], Value::Null);
        assert_eq!(j["release_policy_version"], 0);
    }

    fn snp_machine() -> pb::Hardware {
        pb::Hardware {
            id: "hw-0123456789abcdef0123456789abcdef".into(),
            kind: pb::HardwareKind::Snp as i32,
            status: pb::HardwareStatus::Active as i32,
            country: "DE".into(),
            jurisdiction: "EU".into(),
            site: "fra-1".into(),
            operator: "Example Cloud GmbH".into(),
            snp_chip_id: "ab".repeat(64),
            enrolled_unix_ms: 1_735_689_600_000,
            enrolled_by: "alice".into(),
            enrollment_record: r#"{"product":"milan"}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn hardware_renders_for_people_and_scripts() {
        let mut h = snp_machine();
        let human = hardware_human(&h);
        assert!(human.contains("country:         DE (jurisdiction EU)"), "{human}");
        assert!(
            human.contains(&format!("chip id:         {}…{}", "ab".repeat(8), "ab".repeat(4))),
            "{human}"
        );
        assert!(
            human.contains("enrolled:        2025-01-01T00:00:00Z by alice"),
            "{human}"
        );
        assert!(!human.contains("revoked:"), "{human}");
        let j = hardware_json(&h);
        assert_eq!(j["kind"], "snp");
        assert_eq!(j["status"], "active");
        assert_eq!(j["snp_chip_id"], "ab".repeat(64));
        assert_eq!(j["snp_accept_vlek"], false);
        assert_eq!(j["tpm_ek_digest"], Value::Null);
        assert_eq!(j["revoked_unix_ms"], Value::Null);
        assert_eq!(j["enrollment_record"]["product"], "milan");

        h.status = pb::HardwareStatus::Revoked as i32;
        h.revoked_unix_ms = 1_735_689_660_000;
        h.revoked_by = "bob".into();
        h.revocation_reason = "decommissioned".into();
        let human = hardware_human(&h);
        assert!(
            human.contains("revoked:         2025-01-01T00:01:00Z by bob"),
            "{human}"
        );
        assert!(human.contains("reason:          decommissioned"), "{human}");
        assert_eq!(hardware_json(&h)["revoked_by"], "bob");

        let tpm = pb::Hardware {
            kind: pb::HardwareKind::Tpm as i32,
            country: "FR".into(),
            tpm_ek_digest: "cd".repeat(32),
            tpm_ak_name: format!("000b{}", "ef".repeat(32)),
            tpm_ek_certificate: vec![0x30, 0x82, 0x01],
            ..Default::default()
        };
        let human = hardware_human(&tpm);
        assert!(
            human.contains(&format!("EK digest:       {}", "cd".repeat(32))),
            "{human}"
        );
        assert!(human.contains("country:         FR (no jurisdiction)"), "{human}");
        assert!(!human.contains("VLEK"), "{human}");
        let j = hardware_json(&tpm);
        assert_eq!(j["tpm_ek_certificate"], "MIIB");
        assert_eq!(j["snp_accept_vlek"], Value::Null);

        let table = hardware_table(&[snp_machine(), tpm]);
        assert!(table.lines().count() == 3, "{table}");
        assert!(table.contains("DE/EU"), "{table}");
        assert!(table.contains(&format!("ek {}…", "cd".repeat(8))), "{table}");
        assert_eq!(hardware_table(&[]), "no hardware enrolled\n");
        assert_eq!(abbreviate("abcd"), "abcd");
    }
}
