//! AttestationService over gRPC: identify the caller, decode, run the operation, encode.

use crate::audit::Audit;
use crate::error::ApiError;
use crate::grpc::finish;
use crate::ops::attestation::*;
use crate::wire::admin::status_to_wire;
use crate::wire::attestation::{attested_to_wire, evidence_from_wire, node_identity, tpm_challenge_to_wire};
use kms_proto::v1 as pb;
use kms_proto::Reason;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::attestation_service_server::AttestationService for AttestationPlane {
    async fn get_node_identity(
        &self,
        request: Request<pb::GetNodeIdentityRequest>,
    ) -> Result<Response<pb::NodeIdentity>, Status> {
        self.callers.limit(&request)?;
        let nonce = request.into_inner().nonce;
        if !(16..=64).contains(&nonce.len()) {
            return Err(ApiError::new(Reason::BadNonce, "nonce: 16 to 64 random bytes").to_status());
        }
        let status = crate::ops::admin::seal_status(&self.store, &self.seal)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(node_identity(
            &self.node,
            &nonce,
            &status_to_wire(status),
        )))
    }

    async fn get_challenge(
        &self,
        request: Request<pb::GetChallengeRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        let who = self.callers.identify(&request, "attestation.get_challenge").await?;
        // Not audited when it succeeds: a challenge grants nothing, and Attest records its use.
        match self.engine.challenge(&who).await {
            Ok((nonce, expires)) => Ok(Response::new(pb::Challenge {
                nonce: nonce.to_vec(),
                expires_unix_ms: expires,
            })),
            Err(e) => {
                self.audit
                    .record(Audit::new(who.as_str(), "attestation.get_challenge").failed(&e))
                    .await;
                Err(e.to_status())
            }
        }
    }

    async fn attest(&self, request: Request<pb::AttestRequest>) -> Result<Response<pb::AttestResponse>, Status> {
        let who = self.callers.identify(&request, "attestation.attest").await?;
        let mut audit = Audit::new(who.as_str(), "attestation.attest");
        let req = request.into_inner();
        let result = async {
            let evidence = evidence_from_wire(req.evidence)?;
            self.attest(&who, &req.nonce, &req.hpke_public_key, evidence, &mut audit)
                .await
                .map(attested_to_wire)
        }
        .await;
        finish(&self.audit, audit, result, true).await
    }

    async fn get_token_keys(
        &self,
        request: Request<pb::GetTokenKeysRequest>,
    ) -> Result<Response<pb::TokenKeys>, Status> {
        self.callers.limit(&request)?;
        let nonce = request.into_inner().nonce;
        crate::grpc::optional_nonce(&nonce)?;
        let jwks_json = self.engine.jwks().await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::TokenKeys {
            node_public_key: self.node.public_key().to_vec(),
            node_signature: self.node.sign_token_keys(&nonce, &jwks_json),
            jwks_json,
        }))
    }

    async fn begin_tpm_enrollment(
        &self,
        request: Request<pb::BeginTpmEnrollmentRequest>,
    ) -> Result<Response<pb::TpmEnrollmentChallenge>, Status> {
        let who = self
            .callers
            .identify(&request, "attestation.begin_tpm_enrollment")
            .await?;
        let mut audit = Audit::new(who.as_str(), "attestation.begin_tpm_enrollment");
        let req = request.into_inner();
        let result = self
            .begin_tpm(
                &who,
                req.ek_certificate,
                &req.ek_intermediates,
                req.ak_public,
                &mut audit,
            )
            .await
            .map(tpm_challenge_to_wire);
        finish(&self.audit, audit, result, false).await
    }
}
