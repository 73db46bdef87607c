//! KeyService over gRPC: identify the caller, decode, run the data-plane operation, encode.

use crate::audit::Audit;
use crate::error::ApiError;
use crate::grpc::finish;
use crate::ops::data::Proof;
use crate::ops::data::*;
use crate::wire::context;
use crate::wire::key::sealed_to_wire;
use kms_core::blob::{self, Blob};
use kms_core::ids::{KeyId, KeyVersion};
use kms_core::policy::Operation;
use kms_proto::v1 as pb;
use kms_proto::Reason;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::key_service_server::KeyService for DataPlane {
    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let who = self.callers.identify(&request, "generate_data_key").await?;
        let mut audit = Audit::new(who.as_str(), "generate_data_key");
        let req = request.into_inner();
        let result = async {
            let context = context(req.encryption_context)?;
            let proof = Proof {
                token: &req.attestation_token,
                client_nonce: &req.client_nonce,
            };
            let (blob, dk, key, release) = self
                .new_data_key(&who, &req.key, &context, proof, Operation::GenerateDataKey, &mut audit)
                .await?;
            let version =
                KeyVersion::new(key.latest_version).ok_or_else(|| ApiError::new(Reason::CorruptKey, "version 0"))?;
            let sealed_plaintext = release.seal(
                &self.node,
                Operation::GenerateDataKey,
                &key.id,
                version,
                &blob,
                dk.expose_secret(),
            )?;
            Ok(pb::GenerateDataKeyResponse {
                ciphertext_blob: blob,
                // Never in the clear for an attested release.
                plaintext: if release.is_attested() {
                    Vec::new()
                } else {
                    dk.expose_secret().to_vec()
                },
                key_id: key.id.clone(),
                key_version: version.get(),
                sealed_plaintext: sealed_plaintext.map(sealed_to_wire),
            })
        }
        .await;
        finish(&self.audit, audit, result, true).await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        let who = self
            .callers
            .identify(&request, "generate_data_key_without_plaintext")
            .await?;
        let mut audit = Audit::new(who.as_str(), "generate_data_key_without_plaintext");
        let req = request.into_inner();
        let result = async {
            let context = context(req.encryption_context)?;
            let (blob, _dk, key, _) = self
                .new_data_key(
                    &who,
                    &req.key,
                    &context,
                    Proof::NONE,
                    Operation::GenerateDataKeyWithoutPlaintext,
                    &mut audit,
                )
                .await?;
            Ok(pb::GenerateDataKeyWithoutPlaintextResponse {
                ciphertext_blob: blob,
                key_id: key.id.clone(),
                key_version: key.latest_version,
            })
        }
        .await;
        finish(&self.audit, audit, result, true).await
    }

    async fn encrypt(&self, request: Request<pb::EncryptRequest>) -> Result<Response<pb::EncryptResponse>, Status> {
        let who = self.callers.identify(&request, "encrypt").await?;
        let mut audit = Audit::new(who.as_str(), "encrypt");
        let req = request.into_inner();
        let result = async {
            self.keys.ensure_unsealed()?;
            if req.plaintext.len() > blob::MAX_PLAINTEXT {
                return Err(ApiError::new(
                    Reason::PlaintextTooLong,
                    format!(
                        "plaintext is {} bytes; at most {} may be encrypted",
                        req.plaintext.len(),
                        blob::MAX_PLAINTEXT
                    ),
                ));
            }
            let context = context(req.encryption_context)?;
            let key = self.keys.resolve(&req.key).await?;
            audit.key(&key.id);
            Self::check_usable(&key, &who, Operation::Encrypt)?;
            let version =
                KeyVersion::new(key.latest_version).ok_or_else(|| ApiError::new(Reason::CorruptKey, "version 0"))?;
            let kek = self.keys.kek(&key, version).await?;
            let ciphertext_blob = blob::seal(&kek, KeyId::parse(&key.id)?, version, &context, &req.plaintext)?;
            audit.detail("key_version", version.get());
            Ok(pb::EncryptResponse {
                ciphertext_blob,
                key_id: key.id.clone(),
                key_version: version.get(),
            })
        }
        .await;
        finish(&self.audit, audit, result, true).await
    }

    async fn decrypt(&self, request: Request<pb::DecryptRequest>) -> Result<Response<pb::DecryptResponse>, Status> {
        let who = self.callers.identify(&request, "decrypt").await?;
        let mut audit = Audit::new(who.as_str(), "decrypt");
        let req = request.into_inner();
        let result = async {
            self.keys.ensure_unsealed()?;
            let context = context(req.encryption_context)?;
            if !req.key.is_empty() {
                // The caller must be allowed to decrypt under the key it names before it learns
                // anything about the blob's key (no probing of key names).
                let expected = self.keys.resolve(&req.key).await?;
                if !expected.grants.allows(&who, Operation::Decrypt) {
                    audit.key(&expected.id);
                    return Err(ApiError::new(
                        Reason::NotPermitted,
                        format!("{who} may not call decrypt on key {}", expected.id),
                    ));
                }
                let named = Blob::parse(&req.ciphertext_blob)?.key_id().to_string();
                if named != expected.id {
                    audit.key(&named);
                    return Err(ApiError::new(
                        Reason::KeyMismatch,
                        format!("the blob is under key {named}, not {}", expected.id),
                    ));
                }
            }
            let (plain, key, version, release) = self
                .decrypt_blob(
                    &who,
                    &req.ciphertext_blob,
                    &context,
                    Operation::Decrypt,
                    Proof {
                        token: &req.attestation_token,
                        client_nonce: &req.client_nonce,
                    },
                    &mut audit,
                )
                .await?;
            let sealed_plaintext = release.seal(
                &self.node,
                Operation::Decrypt,
                &key.id,
                version,
                &req.ciphertext_blob,
                plain.expose_secret(),
            )?;
            Ok(pb::DecryptResponse {
                plaintext: if release.is_attested() {
                    Vec::new()
                } else {
                    plain.into_exposed()
                },
                key_id: key.id.clone(),
                key_version: version.get(),
                sealed_plaintext: sealed_plaintext.map(sealed_to_wire),
            })
        }
        .await;
        finish(&self.audit, audit, result, true).await
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let who = self.callers.identify(&request, "re_encrypt").await?;
        let mut audit = Audit::new(who.as_str(), "re_encrypt");
        let req = request.into_inner();
        let result = async {
            self.keys.ensure_unsealed()?;
            let src_ctx = context(req.source_encryption_context)?;
            let dst_ctx = context(req.destination_encryption_context)?;
            let (plain, src_key, src_version, _) = self
                .decrypt_blob(
                    &who,
                    &req.ciphertext_blob,
                    &src_ctx,
                    Operation::ReEncrypt,
                    Proof::NONE,
                    &mut audit,
                )
                .await?;
            let dst = if req.destination_key.is_empty() {
                self.keys.by_id(KeyId::parse(&src_key.id)?).await?
            } else {
                self.keys.resolve(&req.destination_key).await?
            };
            audit.detail("destination_key_id", dst.id.clone());
            Self::check_usable(&dst, &who, Operation::ReEncrypt)?;
            Self::check_no_downgrade(&src_key, &dst)?;
            Self::check_no_grant_widening(&src_key, &dst)?;
            let version =
                KeyVersion::new(dst.latest_version).ok_or_else(|| ApiError::new(Reason::CorruptKey, "version 0"))?;
            let kek = self.keys.kek(&dst, version).await?;
            let ciphertext_blob = blob::seal(&kek, KeyId::parse(&dst.id)?, version, &dst_ctx, plain.expose_secret())?;
            audit.detail("destination_key_version", version.get());
            Ok(pb::ReEncryptResponse {
                ciphertext_blob,
                source_key_id: src_key.id.clone(),
                source_key_version: src_version.get(),
                key_id: dst.id.clone(),
                key_version: version.get(),
            })
        }
        .await;
        finish(&self.audit, audit, result, true).await
    }
}
