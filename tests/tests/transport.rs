//! Transport: mTLS client authentication and principals, the standard health service (following
//! the seal), and server reflection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
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
                sealed_plaintext: None,
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
        sealed_plaintext: None,
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

/// Encrypts under `key` on a channel presenting `identity`: `Ok` if the server took the call,
/// the status (or the transport error) otherwise.
async fn encrypt_as(server: &TestServer, identity: tonic::transport::Identity, key: &str) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(server.ca.clone())
        .identity(identity)
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    kms_proto::v1::key_service_client::KeyServiceClient::new(channel)
        .encrypt(pb::EncryptRequest {
            key: key.into(),
            plaintext: vec![1],
            encryption_context: Default::default(),
            sealed_plaintext: None,
        })
        .await
        .map(|_| ())
        .map_err(|s| {
            // A refusal by kmsd (a reason) would mean the handshake let the certificate in.
            assert!(
                kms_proto::Reason::of(&s).is_none(),
                "kmsd refused the call, so TLS accepted the certificate: {s:?}"
            );
            format!("{s:?}")
        })
}

/// A client certificate with an extended key usage extension must list clientAuth; one without
/// the extension is accepted (RFC 5280, as rustls' verifier reads it). docs/operations.md,
/// "Certificates and principals".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_that_name_usages_need_client_auth() {
    use rcgen::ExtendedKeyUsagePurpose as Eku;
    let Some(c) = Ceremony::new(Backend::Sqlite, Options::default()).await else {
        return;
    };
    c.create_key("eku", &["spiffe://test/eku"], UNATTESTED).await;
    let with = |usages: Vec<Eku>| {
        c.pki.client_with_usages(
            vec![SanType::URI("spiffe://test/eku".try_into().unwrap())],
            "eku",
            usages,
        )
    };
    for usages in [vec![Eku::ServerAuth], vec![Eku::CodeSigning]] {
        let r = encrypt_as(&c.server, with(usages.clone()), "eku").await;
        assert!(r.is_err(), "a client certificate for {usages:?} was accepted");
    }
    for usages in [vec![Eku::ClientAuth], vec![Eku::ServerAuth, Eku::ClientAuth], vec![]] {
        encrypt_as(&c.server, with(usages.clone()), "eku")
            .await
            .unwrap_or_else(|e| panic!("a client certificate for {usages:?} was refused: {e}"));
    }
    c.server.stop().await;
}

/// Serves an uninitialized kmsd (SQLite) whose TLS certificate is `cert`, and runs `kmsctl
/// status` against `https://127.0.0.1:PORT`, verifying the server as `server_name` if given.
async fn status_against_server_certificate(
    pki: &Pki,
    (cert, key): (PathBuf, PathBuf),
    server_name: Option<&str>,
) -> Out {
    let db = Db::new(Backend::Sqlite).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = kms_server::config::Config {
        listen: addr,
        database_url: db.url.clone(),
        tls: Some(kms_server::config::TlsConfig {
            cert,
            key,
            client_ca: pki.ca_path(),
        }),
        node: kms_server::node::NodeEvidence::None,
        ..kms_server::config::Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kms_server::serve(config, listener, async {
        let _ = stopped.await;
    }));
    let (client_cert, client_key) = pki.client_files("spiffe://test/status", "status");
    let mut kmsctl = kmsctl_command(kmsctl_binary().to_str().unwrap());
    kmsctl
        .env("KMSCTL_SERVER", format!("https://127.0.0.1:{}", addr.port()))
        .env("KMSCTL_CA", pki.ca_path())
        .env("KMSCTL_CERT", client_cert)
        .env("KMSCTL_CLIENT_KEY", client_key);
    if let Some(name) = server_name {
        kmsctl.env("KMSCTL_TLS_SERVER_NAME", name);
    }
    let out = Out::from(kmsctl.arg("status").output().await.unwrap());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    out
}

/// The server certificate as kmsctl (kms-client) verifies it: the name it connects to (the
/// URL's host, or --tls-server-name) must be a DNS or IP subjectAltName, the common name is not
/// looked at, and an extended key usage extension must list serverAuth. docs/operations.md,
/// "Certificates and principals".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificates_need_the_name_in_a_san_and_server_auth() {
    use rcgen::ExtendedKeyUsagePurpose as Eku;
    let pki = Pki::new();
    let localhost = || SanType::DnsName("localhost".try_into().unwrap());
    let loopback = || SanType::IpAddress([127, 0, 0, 1].into());

    // An IP SAN for an https://IP URL; serverAuth listed.
    let good = pki.files_with(vec![localhost(), loopback()], "kmsd", vec![Eku::ServerAuth], "good");
    status_against_server_certificate(&pki, good, None).await.expect(0);

    // The address only in the common name: refused, unless kmsctl is told the SAN's name.
    let dns_only = pki.files_with(vec![localhost()], "127.0.0.1", vec![], "dns-only");
    let out = status_against_server_certificate(&pki, dns_only.clone(), None)
        .await
        .expect(3);
    assert!(
        out.stderr.contains("certificate not valid for name \"127.0.0.1\""),
        "{}",
        out.stderr
    );
    status_against_server_certificate(&pki, dns_only, Some("localhost"))
        .await
        .expect(0);

    // A certificate for clients only.
    let client_only = pki.files_with(
        vec![localhost(), loopback()],
        "kmsd",
        vec![Eku::ClientAuth],
        "client-only",
    );
    let out = status_against_server_certificate(&pki, client_only, None)
        .await
        .expect(3);
    assert!(
        out.stderr
            .contains("does not allow extended key usage for server authentication"),
        "{}",
        out.stderr
    );
}
