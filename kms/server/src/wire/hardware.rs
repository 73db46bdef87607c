//! Hardware registry messages: domain rows to protobuf.

use crate::request::Page;
use crate::storage::{HardwareRow, HardwareStatus};
use kms_core::jurisdiction::Country;
use kms_proto::v1 as pb;

/// A registry entry on the wire.
pub(crate) fn hardware_to_wire(h: &HardwareRow) -> pb::Hardware {
    let eu = Country::parse(&h.country).map(|c| c.is_eu()).unwrap_or(false);
    pb::Hardware {
        id: h.id.clone(),
        kind: match h.kind.as_str() {
            "snp" => pb::HardwareKind::Snp,
            "tpm" => pb::HardwareKind::Tpm,
            _ => pb::HardwareKind::Unspecified,
        } as i32,
        status: match h.status {
            HardwareStatus::Active => pb::HardwareStatus::Active,
            HardwareStatus::Revoked => pb::HardwareStatus::Revoked,
        } as i32,
        country: h.country.clone(),
        jurisdiction: if eu { "EU".into() } else { String::new() },
        site: h.site.clone(),
        operator: h.operator.clone(),
        description: h.description.clone(),
        snp_chip_id: h.snp_chip_id.clone().unwrap_or_default(),
        snp_accept_vlek: h.snp_accept_vlek,
        tpm_ek_digest: h.tpm_ek_digest.clone().unwrap_or_default(),
        tpm_ak_name: h.tpm_ak_name.clone().unwrap_or_default(),
        tpm_ek_certificate: h.tpm_ek_certificate.clone().unwrap_or_default(),
        enrolled_unix_ms: h.enrolled_unix_ms,
        enrolled_by: h.enrolled_by.clone(),
        revoked_unix_ms: h.revoked_unix_ms.unwrap_or(0),
        revoked_by: h.revoked_by.clone().unwrap_or_default(),
        revocation_reason: h.revocation_reason.clone().unwrap_or_default(),
        enrollment_record: h.enrollment_record.clone(),
    }
}

/// A page of the registry.
pub(crate) fn hardware_page_to_wire(page: Page<HardwareRow>) -> pb::ListHardwareResponse {
    pb::ListHardwareResponse {
        hardware: page.items.iter().map(hardware_to_wire).collect(),
        next_page_token: page.next_page_token,
    }
}
