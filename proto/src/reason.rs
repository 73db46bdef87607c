//! The stable reasons `kmsd` gives for a refusal, each with its one gRPC code: the contract
//! between the server and every client, listed here once and in `docs/api.md` (a test keeps the
//! two the same). The server builds its errors from a [`Reason`]; clients read it back from a
//! status with [`Reason::of`].

macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident = $text:literal, $code:ident; )*) => {
        /// A stable, machine-readable refusal reason, sent in the `kms-reason` metadata.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[$doc])* $name, )*
        }

        impl Reason {
            /// Every reason, in the order of `docs/api.md`.
            pub const ALL: &'static [Reason] = &[$(Reason::$name),*];

            /// The reason as sent (snake_case).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => $text,)*
                }
            }

            /// The gRPC code every refusal with this reason carries.
            pub const fn code(self) -> tonic::Code {
                match self {
                    $(Reason::$name => tonic::Code::$code,)*
                }
            }

            /// The reason named `text`, if there is one.
            pub fn from_name(text: &str) -> Option<Reason> {
                match text {
                    $($text => Some(Reason::$name),)*
                    _ => None,
                }
            }
        }
    };
}

impl Reason {
    /// The reason `kmsd` gave in a status, if it sent one this client knows (a status without
    /// one comes from the transport or TLS layer, or from a newer server).
    pub fn of(status: &tonic::Status) -> Option<Reason> {
        crate::status::reason(status).and_then(Reason::from_name)
    }

    /// Whether the caller's request was refused (as opposed to a server failure: `INTERNAL`,
    /// `UNAVAILABLE`).
    pub const fn is_refusal(self) -> bool {
        !matches!(
            self.code(),
            tonic::Code::Internal | tonic::Code::Unavailable | tonic::Code::Unknown
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

reasons! {
    // Caller identity
    /// TLS connection without a client certificate.
    NoClientCertificate = "no_client_certificate", PermissionDenied;
    /// The client certificate cannot be parsed.
    BadClientCertificate = "bad_client_certificate", PermissionDenied;
    /// The certificate has no usable URI SAN (one containing `://`), no DNS SAN and no common name.
    NoClientIdentity = "no_client_identity", PermissionDenied;
    // Seal and server state
    /// The server holds no root key (the data plane, `GetTokenKeys`, and every admin call that
    /// needs an unsealed server); custodians must unseal it.
    Sealed = "sealed", Unavailable;
    /// `Init` has not run (on this replica's knowledge).
    NotInitialized = "not_initialized", FailedPrecondition;
    /// `Init` on an initialized database.
    AlreadyInitialized = "already_initialized", FailedPrecondition;
    /// `Unseal` on an unsealed server.
    AlreadyUnsealed = "already_unsealed", FailedPrecondition;
    /// `Unseal` or `Seal` with the dev or pkcs11 seal.
    NotShamir = "not_shamir", FailedPrecondition;
    /// `Unseal` with a share labelled for another admin.
    ShareNotYours = "share_not_yours", PermissionDenied;
    /// A pkcs11 seal or rotation on a server without `[seal.pkcs11]`.
    Pkcs11NotConfigured = "pkcs11_not_configured", FailedPrecondition;
    /// The HSM (module, token, PIN) or the generation's key cannot be used.
    HsmUnavailable = "hsm_unavailable", Unavailable;
    /// The HSM (module, token, PIN) or the generation's key cannot be used.
    HsmKeyMissing = "hsm_key_missing", Unavailable;
    /// The HSM key under the generation's label does not open its canary.
    WrongRootKey = "wrong_root_key", FailedPrecondition;
    /// `rotate_root` while a rotation runs.
    RotationInProgress = "rotation_in_progress", FailedPrecondition;
    /// The root generation changed under a rotation start (propose it again), or while custodians unsealed an older one (unseal with the new generation's shares).
    GenerationChanged = "generation_changed", FailedPrecondition;
    /// The root key was rotated and this replica still holds the previous generation: retry in a moment.
    RootGenerationBehind = "root_generation_behind", Unavailable;
    /// The HSM refused the configured PIN: the pkcs11 seal stays sealed and never tries that PIN again until `kmsd` is restarted with the right one.
    HsmLoginRefused = "hsm_login_refused", FailedPrecondition;
    // Database integrity
    /// A row the call needs is not as `kmsd` wrote it (inserted, edited, authenticator missing or another row's): it is not used. The message names the table and row; the audit entry (`integrity.violation`) says what failed. Also at unseal: a generation's integrity key does not unwrap, or the seal record does not verify (the replica stays sealed).
    RowIntegrity = "row_integrity", FailedPrecondition;
    /// The row is an older version than `kmsd` last wrote, a row `kmsd` deleted put back, or a row `kmsd` wrote that is gone.
    RowRollback = "row_rollback", FailedPrecondition;
    /// The database answered a read with a genuine row the read does not select (another key's row for a lookup by id or name, another machine's registry entry for a lookup by chip id, AK name or EK digest): it is not used. The message names the row returned; the audit entry (`integrity.violation`) names the read.
    RowSubstituted = "row_substituted", FailedPrecondition;
    /// The database went back behind a state this replica saw: the replica serves nothing but `GetSealStatus` until it is restarted (`SealStatus.integrity_alarm`). Also, sealed, when the database is behind the checkpoint anchored in the pkcs11 seal's HSM: until the database is restored, or `kmsd --danger-accept-restored-database` accepts it.
    StateRollback = "state_rollback", FailedPrecondition;
    /// The approval would run a proposal whose stored operation or approvals no longer verify (changed after approval): refused, nothing runs, the proposal stays pending.
    ApprovalInvalid = "approval_invalid", FailedPrecondition;
    // Quorum
    /// A quorum operation's own RPC while M > 1, for an operation that passes its checks:
    /// propose it.
    QuorumRequired = "quorum_required", FailedPrecondition;
    /// The proposed bytes are not a canonical `QuorumOperation`.
    MalformedOperation = "malformed_operation", InvalidArgument;
    /// The proposed bytes are not a canonical `QuorumOperation`.
    NonCanonicalOperation = "non_canonical_operation", InvalidArgument;
    /// The proposed bytes are not a canonical `QuorumOperation`.
    MissingOperation = "missing_operation", InvalidArgument;
    /// `ttl_secs` outside 60 … `admin.proposal_ttl_secs`.
    BadTtl = "bad_ttl", InvalidArgument;
    /// Not `prop-` and 32 hex digits.
    BadProposalId = "bad_proposal_id", InvalidArgument;
    /// No such proposal.
    ProposalNotFound = "proposal_not_found", NotFound;
    /// The approval's SHA-256 is not the proposal's.
    DigestMismatch = "digest_mismatch", InvalidArgument;
    /// This admin approved (or proposed) it already.
    AlreadyApproved = "already_approved", FailedPrecondition;
    /// Past its expiry without reaching M.
    ProposalExpired = "proposal_expired", FailedPrecondition;
    /// Executed, rejected, expired or failed already (also the loser of two racing final approvals).
    ProposalClosed = "proposal_closed", FailedPrecondition;
    /// Counted again inside the executing transaction, the approvals of active admins no longer reach M (an admin was removed or M raised meanwhile): approve again.
    QuorumNotReached = "quorum_not_reached", FailedPrecondition;
    /// This admin rejected the proposal, so cannot approve it (or rejected it already).
    AlreadyRejected = "already_rejected", FailedPrecondition;
    /// M outside 1 … number of active admins.
    BadQuorum = "bad_quorum", InvalidArgument;
    /// Removing the admin (or raising M) would leave fewer admins than M.
    QuorumUnreachable = "quorum_unreachable", FailedPrecondition;
    /// Removing a custodian would leave fewer than the unseal threshold.
    TooFewCustodians = "too_few_custodians", FailedPrecondition;
    /// A request signed by a removed admin.
    AdminRemoved = "admin_removed", PermissionDenied;
    /// `remove_admin` of an unknown or removed admin.
    AdminNotFound = "admin_not_found", NotFound;
    /// A rejection or removal without a reason (1 to 1024 characters).
    BadReason = "bad_reason", InvalidArgument;
    /// `rotate_root` naming a custodian who is not an active admin.
    UnknownCustodian = "unknown_custodian", InvalidArgument;
    /// The dev seal outside dev mode.
    DevSealRefused = "dev_seal_refused", FailedPrecondition;
    /// The database failed; nothing was done or acknowledged.
    DatabaseUnavailable = "database_unavailable", Unavailable;
    /// The audit entry could not be written; nothing was released or acknowledged.
    AuditUnavailable = "audit_unavailable", Unavailable;
    // Keys and blobs
    /// No key given.
    MissingKey = "missing_key", InvalidArgument;
    /// No key with this id or name (for `Decrypt`: the key named in `key`, or in the blob).
    KeyNotFound = "key_not_found", NotFound;
    /// The blob names a version newer than the key's newest, or the key has no stored row for this version.
    KeyVersionNotFound = "key_version_not_found", NotFound;
    /// `Decrypt.key` is set, the caller may decrypt under it, and the blob is under another key.
    KeyMismatch = "key_mismatch", InvalidArgument;
    /// The key is Disabled.
    KeyDisabled = "key_disabled", FailedPrecondition;
    /// The key is PendingDeletion.
    KeyPendingDeletion = "key_pending_deletion", FailedPrecondition;
    /// The key (or this version's material) is destroyed.
    KeyDestroyed = "key_destroyed", FailedPrecondition;
    /// No grant for this principal and operation on this key (for `Decrypt` with `key` set: no `decrypt` grant on the key named there).
    NotPermitted = "not_permitted", PermissionDenied;
    /// `ReEncrypt` to a key whose release policy is not at least as strict as the source key's.
    ReleasePolicyDowngrade = "release_policy_downgrade", FailedPrecondition;
    /// `ReEncrypt` to a key that lets a principal decrypt who may not decrypt under the source key (the message names it).
    GrantsWidened = "grants_widened", FailedPrecondition;
    /// Plaintext requested from a key that releases it only to an attested workload (every key, unless its policy is `none` and the server allows unattested keys).
    AttestationRequired = "attestation_required", FailedPrecondition;
    /// The encryption context breaks a limit.
    InvalidContext = "invalid_context", InvalidArgument;
    /// `Encrypt` with more than 4096 bytes.
    PlaintextTooLong = "plaintext_too_long", InvalidArgument;
    /// `Encrypt.sealed_plaintext` is malformed, given with `plaintext`, or does not open (sealed for another key as named or encryption context, or altered).
    BadSealedPlaintext = "bad_sealed_plaintext", InvalidArgument;
    /// `Encrypt.sealed_plaintext` is sealed to another node's HPKE key (another replica, or this one before a restart): seal to the key the answering node's `GetNodeIdentity` names.
    SealedForOtherNode = "sealed_for_other_node", FailedPrecondition;
    /// Not a v1 blob: length, magic, format version or version 0.
    MalformedBlob = "malformed_blob", InvalidArgument;
    /// Authentication failed: wrong encryption context, or the blob was altered.
    DecryptFailed = "decrypt_failed", InvalidArgument;
    // Admin requests
    /// The payload is not an `AdminRequest`.
    MalformedRequest = "malformed_request", InvalidArgument;
    /// The signed operation is not the RPC called.
    OperationMismatch = "operation_mismatch", InvalidArgument;
    /// Nonce not 16 to 64 bytes.
    BadNonce = "bad_nonce", InvalidArgument;
    /// Timestamp older than the request window.
    StaleRequest = "stale_request", PermissionDenied;
    /// Timestamp more than `admin.max_clock_skew_secs` ahead of the server clock.
    FutureRequest = "future_request", PermissionDenied;
    /// The request names another deployment than this server's `SealStatus.deployment_id` (an `Init` request must name none).
    WrongDeployment = "wrong_deployment", PermissionDenied;
    /// No such admin (for `Init`: the signer is not among the named admins).
    UnknownAdmin = "unknown_admin", PermissionDenied;
    /// The signature does not verify with the admin's key.
    BadSignature = "bad_signature", PermissionDenied;
    /// The nonce was used before.
    ReplayedRequest = "replayed_request", PermissionDenied;
    // Init, admins, shares
    /// `Init` with a seal other than SHAMIR, PKCS11 or DEV, or `rotate_root` to one other than
    /// SHAMIR or PKCS11.
    BadSeal = "bad_seal", InvalidArgument;
    /// `Init` names no admin.
    NoAdmins = "no_admins", InvalidArgument;
    /// `Init` on a server whose configuration pins no initial admin set (`admin.init_admins`).
    InitNotPinned = "init_not_pinned", FailedPrecondition;
    /// The admins `Init` names are not exactly the pinned set (the message counts the unexpected and missing ones).
    InitAdminsMismatch = "init_admins_mismatch", PermissionDenied;
    /// `GetEncryptedShare` or `Unseal` on a sealed server whose configuration pins no
    /// custodians (`admin.custodians`, or else `admin.init_admins`).
    UnsealNotPinned = "unseal_not_pinned", FailedPrecondition;
    /// `GetEncryptedShare` or `Unseal` on a sealed server by an admin whose stored id, country
    /// and keys are not one of the custodians its configuration pins.
    CustodianNotPinned = "custodian_not_pinned", PermissionDenied;
    /// An admin id appears twice in `Init`.
    DuplicateAdmin = "duplicate_admin", InvalidArgument;
    /// Shamir seal with 0 or more than 255 custodians.
    BadCustodians = "bad_custodians", InvalidArgument;
    /// Threshold not between 1 and the number of custodians.
    BadThreshold = "bad_threshold", InvalidArgument;
    /// The admin's country is outside the allowed jurisdictions.
    CountryNotAllowed = "country_not_allowed", PermissionDenied;
    /// An admin public key is not a valid P-256 point.
    InvalidPublicKey = "invalid_public_key", InvalidArgument;
    /// `AddAdmin` with an existing id.
    AdminExists = "admin_exists", AlreadyExists;
    /// `AddAdmin` of a custodian: an admin becomes a custodian only when the root key is
    /// re-shared (`rotate_root` with the new custodian set).
    CustodianNeedsReshare = "custodian_needs_reshare", FailedPrecondition;
    /// `GetEncryptedShare` or `Unseal` by an admin without a share.
    NotACustodian = "not_a_custodian", PermissionDenied;
    /// The share is not sealed to this process's unseal key for this admin.
    ShareUnreadable = "share_unreadable", InvalidArgument;
    /// This custodian already submitted a share in this attempt.
    ShareAlreadySubmitted = "share_already_submitted", FailedPrecondition;
    /// The shares do not rebuild the root key (key check value); all discarded.
    WrongShareSet = "wrong_share_set", InvalidArgument;
    /// The shares cannot be combined; all discarded.
    InvalidShare = "invalid_share", InvalidArgument;
    // Key management
    /// A malformed id, name or country, description or tags over their limits, `page_size` over 1000.
    InvalidArgument = "invalid_argument", InvalidArgument;
    /// Bad grants or release policy; the message names the bad part.
    InvalidPolicy = "invalid_policy", InvalidArgument;
    /// `CreateKey` with `"attestation":"none"` on a server without `danger.allow_unattested_keys`.
    UnattestedKeysDisabled = "unattested_keys_disabled", FailedPrecondition;
    /// A key with this name exists (destroyed keys keep their names).
    KeyNameTaken = "key_name_taken", AlreadyExists;
    /// `RotateKey` on a key that is not Enabled.
    KeyNotEnabled = "key_not_enabled", FailedPrecondition;
    /// The key's state does not allow this change.
    InvalidStateTransition = "invalid_state_transition", FailedPrecondition;
    /// `pending_window_days` not 7 to 30.
    BadDeletionWindow = "bad_deletion_window", InvalidArgument;
    /// `page_token` is not one the server returned.
    BadPageToken = "bad_page_token", InvalidArgument;
    /// A concurrent change hit a uniqueness constraint; retry.
    Conflict = "conflict", AlreadyExists;
    // Attestation
    /// Nonce not 32 bytes.
    InvalidNonce = "invalid_nonce", InvalidArgument;
    /// This service never issued the nonce to this principal (or purged it an hour after expiry).
    NonceUnknown = "nonce_unknown", FailedPrecondition;
    /// The caller is over its call rate (`limits.principal_per_second`, or per peer address
    /// `limits.unauthenticated_per_second`); retry later.
    RateLimited = "rate_limited", ResourceExhausted;
    /// The principal holds `attestation.max_open_challenges` open challenges.
    TooManyChallenges = "too_many_challenges", ResourceExhausted;
    /// The principal holds `attestation.max_open_tpm_enrollments` open enrolment attempts.
    TooManyTpmEnrollments = "too_many_tpm_enrollments", ResourceExhausted;
    /// The challenge expired.
    NonceExpired = "nonce_expired", FailedPrecondition;
    /// The challenge was already used (on any replica).
    NonceReplayed = "nonce_replayed", FailedPrecondition;
    /// Not a 32-byte X25519 public key.
    InvalidHpkePublicKey = "invalid_hpke_public_key", InvalidArgument;
    /// Neither `snp` nor `tpm` set.
    MissingEvidence = "missing_evidence", InvalidArgument;
    /// Evidence does not parse, or a part is over 16 KiB.
    EvidenceMalformed = "evidence_malformed", InvalidArgument;
    /// The VCEK/VLEK does not chain to a pinned (or configured test) root.
    EvidenceCertificateChain = "evidence_certificate_chain", PermissionDenied;
    /// A certificate is outside its validity period.
    EvidenceCertificateValidity = "evidence_certificate_validity", PermissionDenied;
    /// The report or quote signature does not verify.
    EvidenceSignature = "evidence_signature", PermissionDenied;
    /// REPORT_DATA / qualifying data is not H(nonce ‖ hpke key).
    EvidenceBindingMismatch = "evidence_binding_mismatch", PermissionDenied;
    /// Report version, quote magic or type not accepted.
    EvidenceUnsupportedVersion = "evidence_unsupported_version", PermissionDenied;
    /// Debug guest, or migration agent / SMT / memory alias check not done against the server's SNP trust.
    EvidenceGuestPolicy = "evidence_guest_policy", PermissionDenied;
    /// Reported TCB below the minimum, or not the VCEK's, or a product the server does not accept (`attestation.snp.products`).
    EvidenceTcb = "evidence_tcb", PermissionDenied;
    /// Chip id ≠ VCEK hwID, or quote not by the enrolled AK.
    EvidenceHardwareIdentity = "evidence_hardware_identity", PermissionDenied;
    /// VMPL not allowed.
    EvidenceVmpl = "evidence_vmpl", PermissionDenied;
    /// VLEK while the server refuses VLEK, or AK not a restricted signing key.
    EvidenceSigningKey = "evidence_signing_key", PermissionDenied;
    /// The PCR values are not the quoted ones.
    EvidencePcrs = "evidence_pcrs", PermissionDenied;
    /// TPM clock, reset or restart count went back for this AK.
    EvidenceCounters = "evidence_counters", PermissionDenied;
    /// A TPM EK certificate that does not follow the TCG EK Credential Profile.
    EvidenceEkProfile = "evidence_ek_profile", PermissionDenied;
    /// Evidence refused by a check not listed above (the message names it).
    EvidenceRefused = "evidence_refused", PermissionDenied;
    /// No active registry entry for this chip id / AK (or the token's machine is gone).
    HardwareNotEnrolled = "hardware_not_enrolled", PermissionDenied;
    /// The machine's entry is revoked (at Attest, and for every token already issued).
    HardwareRevoked = "hardware_revoked", PermissionDenied;
    /// The machine's country is not in `attestation.allowed_countries` (also at enrolment).
    HardwareOutsideJurisdiction = "hardware_outside_jurisdiction", PermissionDenied;
    /// VLEK-signed evidence for a machine enrolled without `accept_vlek` (also at enrolment).
    VlekNotAccepted = "vlek_not_accepted", PermissionDenied;
    /// No `attestation.tpm_ek_ca_bundle`.
    TpmEnrollmentNotConfigured = "tpm_enrollment_not_configured", FailedPrecondition;
    /// The EK certificate does not parse.
    EkCertificateMalformed = "ek_certificate_malformed", PermissionDenied;
    /// The EK certificate does not chain to the TPM-manufacturer CA bundle, or is expired.
    EkCertificateUntrusted = "ek_certificate_untrusted", PermissionDenied;
    /// A certificate of the manufacturer's CA that does not follow the TCG EK Credential Profile: no TPM manufacturer, model and version in the subjectAltName, or no EK extended key usage (2.23.133.8.1) unless the manufacturer is in `attestation.tpm_ek_eku_exempt_manufacturers`.
    EkCertificateNotEk = "ek_certificate_not_ek", PermissionDenied;
    /// MakeCredential does not support this EK (e.g. ECC P-384).
    EkUnsupported = "ek_unsupported", FailedPrecondition;
    /// The AK's clock record kept changing under concurrent quotes; retry.
    TpmClockContention = "tpm_clock_contention", Unavailable;
    // Tokens and attested release
    /// Not a well-formed token, or an algorithm other than EdDSA.
    TokenMalformed = "token_malformed", PermissionDenied;
    /// The `kid` is none of this deployment's token keys.
    TokenUnknownKey = "token_unknown_key", PermissionDenied;
    /// The signature does not verify (tampered).
    TokenBadSignature = "token_bad_signature", PermissionDenied;
    /// Outside the token's lifetime.
    TokenExpired = "token_expired", PermissionDenied;
    /// Outside the token's lifetime.
    TokenNotYetValid = "token_not_yet_valid", PermissionDenied;
    /// Issuer or audience not this service's.
    TokenWrongAudience = "token_wrong_audience", PermissionDenied;
    /// The token was issued to another mTLS principal.
    TokenPrincipalMismatch = "token_principal_mismatch", PermissionDenied;
    /// A request with `attestation_token` but no `client_nonce`.
    MissingClientNonce = "missing_client_nonce", InvalidArgument;
    /// `client_nonce` not 16 to 64 bytes.
    InvalidClientNonce = "invalid_client_nonce", InvalidArgument;
    /// The claims do not meet the key's release policy; the message names the failing condition and the values.
    ReleasePolicyNotMet = "release_policy_not_met", PermissionDenied;
    // Hardware registry and release policies
    /// `EnrollHardware` without `snp` or `tpm`.
    MissingIdentity = "missing_identity", InvalidArgument;
    /// Not `hw-` + 32 lowercase hex digits.
    InvalidHardwareId = "invalid_hardware_id", InvalidArgument;
    /// No such registry entry.
    HardwareNotFound = "hardware_not_found", NotFound;
    /// The chip / EK / AK is already active in another entry.
    HardwareAlreadyEnrolled = "hardware_already_enrolled", AlreadyExists;
    /// `RevokeHardware` on a revoked entry.
    HardwareAlreadyRevoked = "hardware_already_revoked", FailedPrecondition;
    /// The SNP report's chip id is masked: not enrollable by chip.
    ChipIdMasked = "chip_id_masked", FailedPrecondition;
    /// `accept_vlek` asked for while `attestation.snp.accept_vlek` is off.
    VlekDisabled = "vlek_disabled", FailedPrecondition;
    /// The credential challenge is unknown, expired or already used.
    TpmEnrollmentUnknown = "tpm_enrollment_unknown", FailedPrecondition;
    /// The credential challenge is unknown, expired or already used.
    TpmEnrollmentExpired = "tpm_enrollment_expired", FailedPrecondition;
    /// The credential challenge is unknown, expired or already used.
    TpmEnrollmentUsed = "tpm_enrollment_used", FailedPrecondition;
    /// The activated secret is not the credential: the TPM does not hold that EK, or the AK is not its.
    TpmCredentialMismatch = "tpm_credential_mismatch", PermissionDenied;
    /// The signed request expects another EK digest or AK name than the attempt's (a swapped or altered request file).
    TpmIdentityMismatch = "tpm_identity_mismatch", PermissionDenied;
    // Internal
    /// A wrapped KEK does not unwrap: wrong root key or altered row.
    KekUnwrapFailed = "kek_unwrap_failed", Internal;
    /// A key row with version 0.
    CorruptKey = "corrupt_key", Internal;
    /// A stored admin key does not parse.
    CorruptAdmin = "corrupt_admin", Internal;
    /// HPKE sealing of a released secret failed (not expected in practice).
    HpkeFailed = "hpke_failed", Internal;
    /// Sealing a root-key share to a custodian failed at `Init` or a rotation (not expected: keys are checked when admins are added).
    ShareEnvelope = "share_envelope", Internal;
    /// A key version out of range.
    VersionOverflow = "version_overflow", Internal;
    /// The dev root key file could not be written.
    DevRootWrite = "dev_root_write", Internal;
    /// The token signing key cannot be created or does not unwrap under this root key.
    TokenKey = "token_key", Internal;
    /// The audit checkpoint key cannot be made, unwrapped or found in the HSM, or the HSM cannot sign.
    CheckpointKey = "checkpoint_key", Internal;
    /// The audit checkpoint key cannot be made, unwrapped or found in the HSM, or the HSM cannot sign.
    CheckpointSign = "checkpoint_sign", Internal;
    /// A checkpoint row that no checkpoint key the seal holds verifies stands where the next checkpoint must go (the database's operator wrote it): no checkpoint is stored, and the HSM anchor does not move, until it is removed.
    CheckpointBlocked = "checkpoint_blocked", Internal;
    /// A new root generation has no integrity key (not expected).
    IntegrityKey = "integrity_key", Internal;
    /// A stored root generation is missing or does not decode.
    CorruptRootGeneration = "corrupt_root_generation", Internal;
    /// A row a root rotation re-wraps names an invalid version, or its secret does not unwrap under the old generation.
    RotationInvariant = "rotation_invariant", Internal;
    /// A row a root rotation re-wraps names an invalid version, or its secret does not unwrap under the old generation.
    RotationUnwrap = "rotation_unwrap", Internal;
    /// A storage invariant does not hold (e.g. an update that would change a primary key); a bug.
    StorageInvariant = "storage_invariant", Internal;
    /// An executed quorum operation returned an unexpected result; a bug.
    QuorumResult = "quorum_result", Internal;
    /// An executed quorum operation returned an unexpected result; a bug.
    QuorumNoResult = "quorum_no_result", Internal;
    /// Any other internal failure (e.g. the random number generator).
    Internal = "internal", Internal;
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn names_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{s} is not snake_case"
            );
            assert_eq!(Reason::from_name(s), Some(*r));
            assert_ne!(r.code(), tonic::Code::Ok);
        }
        assert_eq!(Reason::from_name("no_such_reason"), None);
    }

    /// Every reason is documented in docs/api.md with its code, and the reason tables there name
    /// no reason the server cannot give.
    #[test]
    fn every_reason_is_in_the_api_docs_with_its_code() {
        let doc = include_str!("../../docs/api.md");
        let tables = &doc[doc.find("### Reasons").expect("docs/api.md has a Reasons section")..];
        let mut documented = std::collections::BTreeMap::<String, String>::new();
        for line in tables.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (names, code) = (cells[1], cells[2]);
            for name in names.split('`').skip(1).step_by(2) {
                documented.insert(name.to_owned(), code.to_owned());
            }
        }
        for r in Reason::ALL {
            let code = documented
                .get(r.as_str())
                .unwrap_or_else(|| panic!("reason {r} is not in the reason tables of docs/api.md"));
            let want = crate::status::code_name(r.code());
            assert_eq!(code, want, "docs/api.md gives {r} the code {code}, the table {want}");
        }
        for name in documented.keys() {
            assert!(
                Reason::from_name(name).is_some(),
                "docs/api.md documents a reason {name} that kms_proto::Reason does not have"
            );
        }
    }
}
