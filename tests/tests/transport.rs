//! Transport: mTLS client authentication and principals, the standard health service (following
//! the seal), and server reflection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kms_proto::v1 as pb;
use kms_testkit::*;
use rcgen::SanType;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn health_status(server: &TestServer, pki: &Pki, service: &str) -> i32 {
    let ch = server.channel(pki.client("spiffe://test/probe")).await.unwrap();
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn wait_health(server: &TestServer, pki: &Pki, want: ServingStatus) {
    for _ in 0..60 {
        if health_status(server, pki, "kms.v1.KeyService").await == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("kms.v1.KeyService never became {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_seal_and_reflection_lists_services() {
    let Some(mut c) = Ceremony::new(Backend::Sqlite, Options::default()).await else {
        return;
    };
    assert_eq!(
        health_status(&c.server, &c.pki, "").await,
        ServingStatus::Serving as i32
    );
    wait_health(&c.server, &c.pki, ServingStatus::Serving).await;
    c.restart(Options::default()).await;
    wait_health(&c.server, &c.pki, ServingStatus::NotServing).await;
    c.unseal().await;
    wait_health(&c.server, &c.pki, ServingStatus::Serving).await;

    let ch = c.server.channel(c.pki.client("spiffe://test/grpcurl")).await.unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["kms.v1.KeyService", "kms.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    c.server.stop().await;
}

async fn assert_rejected(server: &TestServer, tls: ClientTlsConfig, what: &str) {
    let ch = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = ch {
        let r = kms_proto::v1::key_service_client::KeyServiceClient::new(ch)
            .encrypt(pb::EncryptRequest {
                key: "k".into(),
                plaintext: vec![1],
                encryption_context: Default::default(),
            })
            .await;
        assert!(r.is_err(), "a call {what} succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_a_certificate_from_the_client_ca() {
    let Some(c) = Ceremony::new(Backend::Sqlite, Options::default()).await else {
        return;
    };
    // No client certificate, or one from another CA: the handshake or the first call fails.
    let no_cert = ClientTlsConfig::new()
        .ca_certificate(c.server.ca.clone())
        .domain_name("localhost");
    assert_rejected(&c.server, no_cert, "without a client certificate").await;
    let stranger = Pki::new();
    let foreign = ClientTlsConfig::new()
        .ca_certificate(c.server.ca.clone())
        .identity(stranger.client("spiffe://x"))
        .domain_name("localhost");
    assert_rejected(&c.server, foreign, "with a foreign client certificate").await;
    c.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_come_from_uri_then_dns_then_cn() {
    let Some(c) = Ceremony::new(Backend::Sqlite, Options::default()).await else {
        return;
    };
    c.create_key("by-dns", &["dns:svc.eu.example"], UNATTESTED).await;
    c.create_key("by-cn", &["cn:batch-job"], UNATTESTED).await;
    c.create_key("by-any", &["*"], UNATTESTED).await;
    let dns = c
        .pki
        .client_with(vec![SanType::DnsName("svc.eu.example".try_into().unwrap())], "ignored");
    let cn = c.pki.client_with(vec![], "batch-job");
    let enc = |key: &str| pb::EncryptRequest {
        key: key.into(),
        plaintext: vec![1],
        encryption_context: Default::default(),
    };
    let mut by_dns = kms_proto::v1::key_service_client::KeyServiceClient::new(c.server.channel(dns).await.unwrap());
    let mut by_cn = kms_proto::v1::key_service_client::KeyServiceClient::new(c.server.channel(cn).await.unwrap());
    by_dns.encrypt(enc("by-dns")).await.unwrap();
    by_cn.encrypt(enc("by-cn")).await.unwrap();
    assert_refused(
        by_dns.encrypt(enc("by-cn")).await,
        tonic::Code::PermissionDenied,
        "not_permitted",
    );
    assert_refused(
        by_cn.encrypt(enc("by-dns")).await,
        tonic::Code::PermissionDenied,
        "not_permitted",
    );
    by_dns.encrypt(enc("by-any")).await.unwrap();
    by_cn.encrypt(enc("by-any")).await.unwrap();
    c.server.stop().await;
}
