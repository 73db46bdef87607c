//! The release-policy claims (kms_core::claims) that verified evidence proves, without the
//! hardware registry's: `kmsd` adds the location claims of the enrolled machine for workloads;
//! a node is judged on these alone.

use attestation::snp::SnpClaims;
use attestation::tpm::TpmClaims;
use kms_core::claims::ReleaseClaims;

/// The claims of a verified SEV-SNP report.
pub fn snp(s: &SnpClaims) -> ReleaseClaims {
    let mut c = ReleaseClaims::new();
    c.insert_str("tee", "snp");
    c.insert_bool("danger_test_root", s.danger_test_root);
    c.insert_str("snp.product", s.product.as_str().to_lowercase());
    c.insert_str(
        "snp.signer",
        match s.signer {
            attestation::snp::Signer::Vcek => "vcek",
            attestation::snp::Signer::Vlek => "vlek",
        },
    );
    c.insert_int("snp.report_version", i64::from(s.report_version));
    c.insert_str("snp.chip_id", s.chip_id.to_hex());
    c.insert_str("snp.measurement", hex::encode(s.measurement));
    c.insert_str("snp.host_data", hex::encode(s.host_data));
    c.insert_str("snp.id_key_digest", hex::encode(s.id_key_digest));
    c.insert_str("snp.author_key_digest", hex::encode(s.author_key_digest));
    c.insert_str("snp.family_id", hex::encode(s.family_id));
    c.insert_str("snp.image_id", hex::encode(s.image_id));
    c.insert_int("snp.guest_svn", i64::from(s.guest_svn));
    c.insert_int("snp.vmpl", i64::from(s.vmpl));
    for (prefix, t) in [
        ("snp.tcb", &s.reported_tcb),
        ("snp.committed_tcb", &s.committed_tcb),
        ("snp.launch_tcb", &s.launch_tcb),
    ] {
        c.insert_int(format!("{prefix}.bootloader"), i64::from(t.bootloader));
        c.insert_int(format!("{prefix}.tee"), i64::from(t.tee));
        c.insert_int(format!("{prefix}.snp"), i64::from(t.snp));
        c.insert_int(format!("{prefix}.microcode"), i64::from(t.microcode));
        if let Some(fmc) = t.fmc {
            c.insert_int(format!("{prefix}.fmc"), i64::from(fmc));
        }
    }
    let p = &s.policy;
    c.insert_bool("snp.policy.debug", p.debug);
    c.insert_bool("snp.policy.migration_agent", p.migration_agent);
    c.insert_bool("snp.policy.smt", p.smt);
    c.insert_bool("snp.policy.single_socket", p.single_socket);
    c.insert_int("snp.policy.abi_major", i64::from(p.abi_major));
    c.insert_int("snp.policy.abi_minor", i64::from(p.abi_minor));
    c.insert_bool("snp.platform.smt_enabled", s.platform_info.smt_enabled);
    c.insert_bool("snp.platform.tsme_enabled", s.platform_info.tsme_enabled);
    c.insert_bool(
        "snp.platform.alias_check_complete",
        s.platform_info.alias_check_complete,
    );
    c
}

/// The claims of a verified TPM quote; `ek_digest` when the EK behind the AK is known (an
/// enrolment verified it).
pub fn tpm(t: &TpmClaims, ek_digest: Option<&str>) -> ReleaseClaims {
    let mut c = ReleaseClaims::new();
    c.insert_str("tee", "tpm");
    c.insert_bool("danger_test_root", false);
    c.insert_str("tpm.ak_name", t.ak_name.to_hex());
    if let Some(ek) = ek_digest {
        c.insert_str("tpm.ek_digest", ek);
    }
    c.insert_str("tpm.firmware_version", format!("{:016x}", t.firmware_version));
    for (index, value) in t.pcrs.iter() {
        c.insert_str(format!("tpm.pcr.{index}"), hex::encode(value));
    }
    c
}
