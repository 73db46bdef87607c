//! The tower layer that counts and times every unary RPC of kmsd's services (`kms.v1.*` and
//! `grpc.health.v1.Health/Check`) by service, method, gRPC code and the stable reason the
//! status carries in its `kms-reason` metadata ([`crate::telemetry`] names the metrics). One
//! place for every RPC, so no handler records anything itself.
//!
//! The RPC names come from the services' descriptor sets, so a path a client makes up is not
//! recorded (labels stay bounded); streaming RPCs (health Watch, reflection) are not timed.
//! Reads only the path and the response headers: never a message, metadata value other than
//! the reason, or anything about the caller.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prost::Message;
use tonic::codegen::http;
use tonic::codegen::Service;

use crate::telemetry::{self, RpcOk};

/// One unary RPC.
struct Rpc {
    service: &'static str,
    method: &'static str,
    ok: RpcOk,
}

impl Rpc {
    fn finished(&self, headers: &http::HeaderMap, elapsed: Duration) {
        // A unary answer that is an error is trailers-only: grpc-status and the reason are in
        // the headers. Without grpc-status the call succeeded (OK follows in the trailers).
        let code = match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
            None => tonic::Code::Ok,
            Some(s) => s
                .parse::<i32>()
                .map(tonic::Code::from_i32)
                .unwrap_or(tonic::Code::Unknown),
        };
        if code == tonic::Code::Ok {
            self.ok.record(elapsed);
            return;
        }
        let reason = headers
            .get(kms_proto::status::REASON_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(kms_proto::Reason::from_name)
            .map_or("none", kms_proto::Reason::as_str);
        telemetry::rpc_failed(
            self.service,
            self.method,
            kms_proto::status::code_name(code),
            reason,
            elapsed,
        );
    }
}

/// The unary RPCs by path (`/kms.v1.KeyService/GenerateDataKey`), built once per process from
/// the descriptor sets, after the recorder is installed (each holds its success handles).
fn rpcs() -> &'static HashMap<String, Rpc> {
    static RPCS: OnceLock<HashMap<String, Rpc>> = OnceLock::new();
    RPCS.get_or_init(|| {
        let mut map = HashMap::new();
        for set in [
            kms_proto::v1::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            // The sets are generated at build time from our own protos: they always decode.
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                tracing::error!("a built-in descriptor set does not decode: RPCs are not counted");
                continue;
            };
            for file in set.file {
                let package = file.package().to_owned();
                for service in file.service {
                    let full: &'static str = Box::leak(format!("{package}.{}", service.name()).into_boxed_str());
                    for m in service.method {
                        if m.client_streaming() || m.server_streaming() {
                            continue;
                        }
                        let method: &'static str = Box::leak(m.name().to_owned().into_boxed_str());
                        map.insert(
                            format!("/{full}/{method}"),
                            Rpc {
                                service: full,
                                method,
                                ok: RpcOk::new(full, method),
                            },
                        );
                    }
                }
            }
        }
        map
    })
}

/// The layer: records when metrics are on, passes calls straight through otherwise.
#[derive(Clone, Copy, Debug)]
pub struct Metered {
    on: bool,
}

impl Metered {
    /// Records while `on` (the recorder must be installed by then: [`telemetry::install`]).
    pub fn new(on: bool) -> Self {
        if on {
            rpcs();
        }
        Self { on }
    }
}

impl<S> tower_layer::Layer<S> for Metered {
    type Service = MeteredService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MeteredService {
            inner,
            rpcs: self.on.then(rpcs),
        }
    }
}

/// A service wrapped by [`Metered`].
#[derive(Clone, Debug)]
pub struct MeteredService<S> {
    inner: S,
    rpcs: Option<&'static HashMap<String, Rpc>>,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.method)
    }
}

impl<S, B, R> Service<http::Request<B>> for MeteredService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = self.rpcs.and_then(|r| r.get(req.uri().path()));
        let call = self.inner.call(req);
        match rpc {
            None => Box::pin(call),
            Some(rpc) => {
                let start = Instant::now();
                Box::pin(async move {
                    let response = call.await;
                    if let Ok(r) = &response {
                        rpc.finished(r.headers(), start.elapsed());
                    }
                    response
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unary_rpcs_of_our_services_are_known() {
        let rpcs = rpcs();
        for path in [
            "/kms.v1.KeyService/GenerateDataKey",
            "/kms.v1.KeyService/Decrypt",
            "/kms.v1.AdminService/CreateKey",
            "/kms.v1.AttestationService/Attest",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(rpcs.contains_key(path), "{path}");
        }
        let attest = &rpcs["/kms.v1.AttestationService/Attest"];
        assert_eq!((attest.service, attest.method), ("kms.v1.AttestationService", "Attest"));
        // Streams and made-up paths are not recorded.
        for path in ["/grpc.health.v1.Health/Watch", "/kms.v1.KeyService/Nope", "/x"] {
            assert!(!rpcs.contains_key(path), "{path}");
        }
    }
}
