//! KeyService over gRPC: identify the caller, decode, run the data-plane operation, encode; sign
//! the answer when the caller sent a nonce for it (`kms_proto::answer`).

use crate::audit::Audit;
use crate::grpc::{finish, SignFor};
use crate::ops::data::{DataPlane, Proof};
use crate::wire::context;
use crate::wire::key::*;
use kms_proto::v1 as pb;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::key_service_server::KeyService for DataPlane {
    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let who = self.callers.identify(&request, "generate_data_key").await?;
        let mut audit = Audit::new(who.as_str(), "generate_data_key");
        let sign_for = match SignFor::asked(&request) {
            Ok(s) => s,
            Err(e) => return finish::<pb::GenerateDataKeyResponse>(&self.audit, audit, Err(e), false).await,
        };
        let req = request.into_inner();
        let result = async {
            let context = context(req.encryption_context)?;
            let proof = Proof {
                token: &req.attestation_token,
                client_nonce: &req.client_nonce,
            };
            self.generate_data_key(&who, &req.key, &context, proof, &mut audit)
                .await
                .map(generate_data_key_to_wire)
        }
        .await;
        finish(&self.audit, audit, result, true)
            .await
            .map(|r| SignFor::answer(sign_for, &self.node, "generate_data_key", r))
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
        let sign_for = match SignFor::asked(&request) {
            Ok(s) => s,
            Err(e) => {
                return finish::<pb::GenerateDataKeyWithoutPlaintextResponse>(&self.audit, audit, Err(e), false).await
            }
        };
        let req = request.into_inner();
        let result = async {
            let context = context(req.encryption_context)?;
            self.generate_data_key_without_plaintext(&who, &req.key, &context, &mut audit)
                .await
                .map(without_plaintext_to_wire)
        }
        .await;
        finish(&self.audit, audit, result, true)
            .await
            .map(|r| SignFor::answer(sign_for, &self.node, "generate_data_key_without_plaintext", r))
    }

    async fn encrypt(&self, request: Request<pb::EncryptRequest>) -> Result<Response<pb::EncryptResponse>, Status> {
        let who = self.callers.identify(&request, "encrypt").await?;
        let mut audit = Audit::new(who.as_str(), "encrypt");
        let sign_for = match SignFor::asked(&request) {
            Ok(s) => s,
            Err(e) => return finish::<pb::EncryptResponse>(&self.audit, audit, Err(e), false).await,
        };
        let mut req = request.into_inner();
        let result = async {
            let context = context(req.encryption_context)?;
            // Wiped when the call ends (the bytes tonic decoded it from are not: threat-model.md).
            let plaintext = zeroize::Zeroizing::new(std::mem::take(&mut req.plaintext));
            let input = encrypt_input(&plaintext, req.sealed_plaintext.take())?;
            self.encrypt(&who, &req.key, &context, input, &mut audit)
                .await
                .map(encrypt_to_wire)
        }
        .await;
        finish(&self.audit, audit, result, true)
            .await
            .map(|r| SignFor::answer(sign_for, &self.node, "encrypt", r))
    }

    async fn decrypt(&self, request: Request<pb::DecryptRequest>) -> Result<Response<pb::DecryptResponse>, Status> {
        let who = self.callers.identify(&request, "decrypt").await?;
        let mut audit = Audit::new(who.as_str(), "decrypt");
        let sign_for = match SignFor::asked(&request) {
            Ok(s) => s,
            Err(e) => return finish::<pb::DecryptResponse>(&self.audit, audit, Err(e), false).await,
        };
        let req = request.into_inner();
        let result = async {
            let context = context(req.encryption_context)?;
            let proof = Proof {
                token: &req.attestation_token,
                client_nonce: &req.client_nonce,
            };
            self.decrypt(&who, &req.key, &req.ciphertext_blob, &context, proof, &mut audit)
                .await
                .map(decrypt_to_wire)
        }
        .await;
        finish(&self.audit, audit, result, true)
            .await
            .map(|r| SignFor::answer(sign_for, &self.node, "decrypt", r))
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let who = self.callers.identify(&request, "re_encrypt").await?;
        let mut audit = Audit::new(who.as_str(), "re_encrypt");
        let sign_for = match SignFor::asked(&request) {
            Ok(s) => s,
            Err(e) => return finish::<pb::ReEncryptResponse>(&self.audit, audit, Err(e), false).await,
        };
        let req = request.into_inner();
        let result = async {
            let src_ctx = context(req.source_encryption_context)?;
            let dst_ctx = context(req.destination_encryption_context)?;
            self.re_encrypt(
                &who,
                &req.ciphertext_blob,
                &src_ctx,
                &req.destination_key,
                &dst_ctx,
                &mut audit,
            )
            .await
            .map(re_encrypt_to_wire)
        }
        .await;
        finish(&self.audit, audit, result, true)
            .await
            .map(|r| SignFor::answer(sign_for, &self.node, "re_encrypt", r))
    }
}
