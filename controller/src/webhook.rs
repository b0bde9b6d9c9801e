//! The mutating admission webhook for Services (`--listen-webhook`): kube-apiserver posts an
//! `admission.k8s.io/v1` AdmissionReview for each Service create and update to
//! [`WEBHOOK_PATH`] over HTTPS; [`crate::allocation`] takes the values from the pools and the
//! answer carries its JSONPatch, or its denial with upstream's code, reason, message and field.
//!
//! Every replica serves it (the pools' compare-and-swap keeps replicas apart; no leader). It
//! never calls the Kubernetes API. An admission runs to its end in a task of its own — a caller
//! that hangs up cannot cut it between taking a value and giving it back — and within the
//! allocation deadline, after which it takes nothing more and gives back what it took.
//!
//! The serving certificate and key are read again when either file changes (checked at most
//! once per [`RELOAD_CHECK`], at a handshake), so a rotated certificate is served without a
//! restart; a pair that does not load is logged and the previous one kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use ipam::store::Store;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::{DynamicObject, Status};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value as Json;

use crate::allocation::{AllocationRequest, Denial, ServiceAllocator, internal};
use crate::metrics::Metrics;

/// Where kube-apiserver posts Service AdmissionReviews (the `clientConfig` path).
pub const WEBHOOK_PATH: &str = "/mutate-services";

/// How often at most the certificate files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The largest AdmissionReview accepted (kube-apiserver's own request limit is 3 MiB).
const MAX_REVIEW_BYTES: usize = 8 << 20;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the webhook needs.
pub struct Webhook<S: Store> {
    pub allocator: Arc<ServiceAllocator<S>>,
    /// The allocation deadline: an admission not done by then is answered with a timeout and
    /// leaves nothing allocated (`--allocation-timeout`).
    pub allocation_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// A certificate and key read from files, read again when they change.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl CertFiles {
    /// Reads the pair; an error names the flag and the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<CertFiles, String> {
        let loaded = Loaded {
            key: Arc::new(read_pair(cert, key)?),
            stamps: stamps(cert, key),
            checked: Instant::now(),
        };
        Ok(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new(loaded),
        })
    }

    /// The pair to serve now, read again first if a file changed.
    fn get(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.checked.elapsed() < RELOAD_CHECK {
            return current.key.clone();
        }
        current.checked = Instant::now();
        let now = stamps(&self.cert, &self.key);
        if now == current.stamps {
            return current.key.clone();
        }
        match read_pair(&self.cert, &self.key) {
            Ok(pair) => {
                tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                current.key = Arc::new(pair);
                current.stamps = now;
            }
            // A half-written rotation is retried at the next check; the old pair serves.
            Err(e) => {
                tracing::warn!(error = %e, "serving certificate not reloaded; keeping the previous one")
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

fn stamps(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "--tls-cert-file {}: cannot read certificates: {e}",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert-file {}: holds no certificate",
            cert.display()
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "--tls-key-file {}: cannot read a private key: {e}",
            key.display()
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("--tls-key-file {}: unusable key: {e}", key.display()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        format!(
            "--tls-key-file {} does not fit --tls-cert-file {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(pair)
}

/// The TLS configuration serving `certs`.
pub fn tls_config(certs: Arc<CertFiles>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    // HTTP/1.1 only, as controller-runtime's webhook servers by default (HTTP/2's rapid reset,
    // CVE-2023-44487): kube-apiserver then opens a connection per concurrent admission, which
    // a Service in front of several replicas spreads over them.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Binds `addr`, naming the flag in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("--listen-webhook {addr}: cannot listen: {e}"),
        )
    })
}

/// Serves the webhook on `listener` until the process ends.
pub async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Webhook<S>,
) {
    let app = Router::new()
        .route(WEBHOOK_PATH, post(review::<S>))
        .with_state(Arc::new(webhook));
    let service = TowerToHyperService::new(app);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "webhook: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (service, acceptor) = (service.clone(), acceptor.clone());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "webhook: TLS handshake timed out");
                        return;
                    }
                };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .http1_only()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook: connection ended with an error");
            }
        });
    }
}

/// One AdmissionReview in, one out.
async fn review<S: Store>(State(webhook): State<Arc<Webhook<S>>>, body: Bytes) -> Response {
    let metrics = webhook.metrics.clone();
    let started = Instant::now();
    metrics.webhook_in_flight.add_gauge(&[WEBHOOK_PATH], 1.0);
    let (code, response) = answer(&webhook, &body).await;
    metrics.webhook_in_flight.add_gauge(&[WEBHOOK_PATH], -1.0);
    metrics
        .webhook_latency
        .observe(&[WEBHOOK_PATH], started.elapsed().as_secs_f64());
    metrics.webhook_requests.inc(&[code.as_str(), WEBHOOK_PATH]);
    response
}

async fn answer<S: Store>(webhook: &Webhook<S>, body: &[u8]) -> (StatusCode, Response) {
    let bad = |message: String| {
        (
            StatusCode::BAD_REQUEST,
            (StatusCode::BAD_REQUEST, message).into_response(),
        )
    };
    if body.len() > MAX_REVIEW_BYTES {
        return bad(format!(
            "the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes"
        ));
    }
    // The raw object is kept so the JSONPatch is computed against exactly what was sent.
    let raw: Json = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(raw.clone()) {
        Ok(review) => review,
        Err(e) => {
            return bad(format!(
                "the body is not an admission.k8s.io/v1 AdmissionReview: {e}"
            ));
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(_) => return bad("the AdmissionReview carries no request".into()),
    };
    let response = admit(webhook, &request, &raw["request"]).await;
    (
        StatusCode::OK,
        axum::Json(canonical(response.into_review())).into_response(),
    )
}

/// The review as JSON, its patch base64-encoded as admission.k8s.io/v1 has it (kube's types
/// serialize the bytes as an array of numbers, which Go's decoder happens to accept and other
/// clients need not).
fn canonical(review: AdmissionReview<DynamicObject>) -> Json {
    use base64::Engine as _;
    let mut body = serde_json::to_value(review).unwrap_or_default();
    if let Some(bytes) = body
        .pointer("/response/patch")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Vec<u8>>()
        })
    {
        body["response"]["patch"] =
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    body
}

/// The answer to one request: Services' creates and updates are allocated for; anything else
/// (a webhook configuration matching more than it should) is let through untouched.
async fn admit<S: Store>(
    webhook: &Webhook<S>,
    request: &AdmissionRequest<DynamicObject>,
    raw: &Json,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let is_service = request.kind.group.is_empty() && request.kind.kind == "Service";
    let writes = matches!(request.operation, Operation::Create | Operation::Update);
    if !is_service || !writes || request.sub_resource.is_some() {
        tracing::debug!(kind = %request.kind.kind, operation = ?request.operation, "webhook: not a Service write; allowed as is");
        return allowed;
    }
    let Some(object) = raw.get("object").filter(|o| o.is_object()).cloned() else {
        return deny(
            &webhook.metrics,
            allowed,
            &request.name,
            Denial {
                code: 400,
                reason: "BadRequest".into(),
                message: "the AdmissionReview's request carries no object".into(),
                field: None,
            },
        );
    };
    let old_object = raw.get("oldObject").filter(|o| o.is_object()).cloned();
    let allocation = AllocationRequest {
        uid: request.uid.clone(),
        object,
        old_object,
        dry_run: request.dry_run,
        deadline: Some(Instant::now() + webhook.allocation_timeout),
    };
    // Its own task: a caller that hangs up does not cut the admission between taking a value
    // and giving it back.
    let allocator = webhook.allocator.clone();
    let outcome = tokio::spawn(async move { allocator.admit(&allocation).await }).await;
    match outcome {
        Ok(Ok(admitted)) if admitted.patch.0.is_empty() => allowed,
        Ok(Ok(admitted)) => match allowed.clone().with_patch(admitted.patch) {
            Ok(patched) => patched,
            Err(e) => deny(
                &webhook.metrics,
                allowed,
                &request.name,
                internal(format!("cannot encode the patch: {e}")),
            ),
        },
        Ok(Err(denial)) => deny(&webhook.metrics, allowed, &request.name, denial),
        Err(e) => deny(
            &webhook.metrics,
            allowed,
            &request.name,
            internal(format!("the admission failed: {e}")),
        ),
    }
}

/// A refusal as kube-apiserver's own validation words it, which kube-apiserver passes on with
/// `admission webhook "<name>" denied the request: ` before the message: a field error is
/// `Service "<name>" is invalid: <field>: <body>` with the field and body as a cause (kubectl
/// prints `The Service "<name>" is invalid: <field>: <body>` from them, as it does for
/// kube-apiserver's own refusal); anything else is the code, reason and message.
fn deny(
    metrics: &Metrics,
    response: AdmissionResponse,
    name: &str,
    denial: Denial,
) -> AdmissionResponse {
    metrics
        .webhook_denials
        .inc(&[bounded_reason(&denial.reason)]);
    let cause = denial.field.as_deref().and_then(|field| {
        let body = denial.message.strip_prefix(field)?.strip_prefix(": ")?;
        Some((field.to_string(), body.to_string()))
    });
    let message = match &cause {
        Some(_) => format!("Service {name:?} is invalid: {}", denial.message),
        None => denial.message.clone(),
    };
    let mut response = response.deny(&message);
    let mut status = Status::failure(&message, &denial.reason).with_code(denial.code);
    if let Some((field, body)) = cause {
        status = status.with_details(StatusDetails {
            name: name.to_string(),
            group: String::new(),
            kind: "Service".into(),
            uid: String::new(),
            causes: vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: body,
                field,
            }],
            retry_after_seconds: 0,
        });
    }
    response.result = status;
    response
}

/// The denial reasons the allocation gives; anything else is counted as `Other`.
fn bounded_reason(reason: &str) -> &'static str {
    match reason {
        "Invalid" => "Invalid",
        "InternalError" => "InternalError",
        "Timeout" => "Timeout",
        "BadRequest" => "BadRequest",
        _ => "Other",
    }
}
