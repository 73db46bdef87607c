//! The operator's proxy: a gRPC server with a certificate the clients trust (the test CA's),
//! which forwards every call of the three kms.v1 services to a real kmsd over mTLS as a given
//! principal, and may rewrite what it forwards. Messages are forwarded as bytes (a raw codec),
//! so a test decodes, changes and re-encodes exactly the message it attacks; `kms-*` metadata
//! is forwarded both ways too (a caller's answer nonce, the node's signature over an answer),
//! and an answer's may be rewritten;
//! the proxy records the methods it was asked for. [`GrpcProxy::balancing`] spreads the calls
//! over several upstreams (replicas), as a load balancer does when a reconnection lands on
//! another replica.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kms_proto::codec::RawCodec as Raw;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::{Certificate, Channel, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::{Pki, Reachable};

/// Rewrites a message on its way: `(method path, message bytes) -> message bytes`.
pub type Rewrite = dyn Fn(&str, Vec<u8>) -> Result<Vec<u8>, Status> + Send + Sync;

/// Rewrites an answer's metadata on its way back: `(method path, metadata)`.
pub type RewriteMetadata = dyn Fn(&str, &mut MetadataMap) + Send + Sync;

/// What the proxy does to the messages it forwards.
#[derive(Clone)]
pub struct Tamper {
    /// Applied to each request before it is forwarded.
    pub request: Arc<Rewrite>,
    /// Applied to each answer before it is returned.
    pub response: Arc<Rewrite>,
    /// Applied to each answer's `kms-*` metadata (the node's signature over an admin answer)
    /// before it is returned.
    pub metadata: Arc<RewriteMetadata>,
}

impl Tamper {
    /// Forwards everything unchanged.
    pub fn none() -> Self {
        let same: Arc<Rewrite> = Arc::new(|_, m| Ok(m));
        Self {
            request: same.clone(),
            response: same,
            metadata: Arc::new(|_, _| {}),
        }
    }

    /// Rewrites the answers of `method` (e.g. `/kms.v1.KeyService/GenerateDataKey`), decoded
    /// as `T`, with `f`.
    pub fn response<T: prost::Message + Default>(
        method: &'static str,
        f: impl Fn(&mut T) + Send + Sync + 'static,
    ) -> Self {
        Self {
            response: Arc::new(move |path, bytes| {
                if path != method {
                    return Ok(bytes);
                }
                let mut m = T::decode(bytes.as_slice()).map_err(|e| Status::internal(format!("proxy: {e}")))?;
                f(&mut m);
                Ok(m.encode_to_vec())
            }),
            ..Self::none()
        }
    }
}

/// Which upstream a call goes to: `(method path) -> index` into the upstreams.
pub type Route = dyn Fn(&str) -> usize + Send + Sync;

/// A running proxy; stops when dropped.
pub struct GrpcProxy {
    addr: SocketAddr,
    ca: Certificate,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reachable for GrpcProxy {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn ca(&self) -> &Certificate {
        &self.ca
    }
}

impl GrpcProxy {
    /// Listens on loopback with a `localhost` certificate of `pki`'s CA, and forwards to
    /// `upstream` as `principal`, through `tamper`.
    pub async fn start(pki: &Pki, upstream: &impl Reachable, principal: &str, tamper: Tamper) -> Self {
        let channel = upstream.channel(pki.client(principal)).await.unwrap();
        Self::serve(pki, vec![channel], Arc::new(|_| 0), tamper).await
    }

    /// Forwards each call unchanged to the upstream `route` picks for it, as `principal`.
    pub async fn balancing<R: Reachable>(
        pki: &Pki,
        upstreams: &[&R],
        principal: &str,
        route: impl Fn(&str) -> usize + Send + Sync + 'static,
    ) -> Self {
        let mut channels = Vec::new();
        for upstream in upstreams {
            channels.push(upstream.channel(pki.client(principal)).await.unwrap());
        }
        Self::serve(pki, channels, Arc::new(route), Tamper::none()).await
    }

    async fn serve(pki: &Pki, channels: Vec<Channel>, route: Arc<Route>, tamper: Tamper) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let forward = Forwarder {
            channels,
            route,
            tamper,
            seen: seen.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(pki.server_identity("operator-proxy")))
            .unwrap()
            .add_service(Forward::<KeySvc>::new(forward.clone()))
            .add_service(Forward::<AdminSvc>::new(forward.clone()))
            .add_service(Forward::<AttestationSvc>::new(forward))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        Self {
            addr,
            ca: Certificate::from_pem(pki.ca_pem.clone()),
            seen,
            task,
        }
    }

    /// The methods forwarded so far (paths, e.g. `/kms.v1.AdminService/Unseal`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct Forwarder {
    channels: Vec<Channel>,
    route: Arc<Route>,
    tamper: Tamper,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Forwarder {
    async fn call(self, path: String, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, Status> {
        self.seen.lock().unwrap().push(path.clone());
        let asked = kms_metadata(request.metadata());
        let request = (self.tamper.request)(&path, request.into_inner())?;
        let mut request = Request::new(request);
        *request.metadata_mut() = asked;
        let upstream = self
            .channels
            .get((self.route)(&path))
            .ok_or_else(|| Status::internal("proxy: no such upstream"))?;
        let mut client = tonic::client::Grpc::new(upstream.clone());
        client
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("proxy: {e}")))?;
        let method: http::uri::PathAndQuery = path.parse().map_err(|_| Status::internal("proxy: path"))?;
        let answer = client.unary(request, method, Raw).await?;
        let mut metadata = kms_metadata(answer.metadata());
        (self.tamper.metadata)(&path, &mut metadata);
        let message = (self.tamper.response)(&path, answer.into_inner())?;
        Ok(Response::from_parts(metadata, message, tonic::Extensions::default()))
    }
}

/// The `kms-*` binary entries of `from`: what an honest gRPC proxy forwards both ways (the
/// nonce a caller wants its answer signed over, the node's signature); the HTTP and gRPC
/// headers are the proxy's own.
fn kms_metadata(from: &MetadataMap) -> MetadataMap {
    let mut to = MetadataMap::new();
    for entry in from.iter() {
        if let tonic::metadata::KeyAndValueRef::Binary(k, v) = entry {
            if k.as_str().starts_with("kms-") {
                to.insert_bin(k.clone(), v.clone());
            }
        }
    }
    to
}

/// A service name the proxy answers for.
trait ServiceName: Send + Sync + 'static {
    const NAME: &'static str;
}
struct KeySvc;
struct AdminSvc;
struct AttestationSvc;
impl ServiceName for KeySvc {
    const NAME: &'static str = "kms.v1.KeyService";
}
impl ServiceName for AdminSvc {
    const NAME: &'static str = "kms.v1.AdminService";
}
impl ServiceName for AttestationSvc {
    const NAME: &'static str = "kms.v1.AttestationService";
}

/// Every unary method of service `S`, forwarded.
struct Forward<S> {
    inner: Forwarder,
    name: PhantomData<S>,
}

impl<S> Forward<S> {
    fn new(inner: Forwarder) -> Self {
        Self {
            inner,
            name: PhantomData,
        }
    }
}

impl<S> Clone for Forward<S> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<S: ServiceName> NamedService for Forward<S> {
    const NAME: &'static str = S::NAME;
}

/// One call, as tonic's unary handler wants it.
struct Unary {
    inner: Forwarder,
    path: String,
}

impl tonic::server::UnaryService<Vec<u8>> for Unary {
    type Response = Vec<u8>;
    type Future = BoxFuture<Response<Vec<u8>>, Status>;
    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        let inner = self.inner.clone();
        let path = self.path.clone();
        Box::pin(async move { inner.call(path, request).await })
    }
}

impl<S: ServiceName> Service<http::Request<tonic::body::Body>> for Forward<S> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let svc = Unary {
            inner: self.inner.clone(),
            path: request.uri().path().to_owned(),
        };
        Box::pin(async move { Ok(tonic::server::Grpc::new(Raw).unary(svc, request).await) })
    }
}
