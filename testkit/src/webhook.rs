//! A small HTTPS mutating admission webhook (AdmissionReview `admission.k8s.io/v1`) for tests of
//! the API server's webhook client: certificates made with `openssl` ([`crate::make_certs`]), a
//! server on its own thread and tokio runtime, and a verdict chosen by the Service's `webhook`
//! label.
//!
//! | label `webhook` | response |
//! |---|---|
//! | `deny` | `allowed: false`, status 422 `Invalid` with cause field `metadata.labels` |
//! | `patch` | allowed, with a JSONPatch adding annotation `test-webhook/seen: "true"` and, when absent, `spec.clusterIP` `10.0.0.42` and `spec.clusterIPs` `["10.0.0.42"]` |
//! | `bad-patch` | allowed, with a JSONPatch that cannot apply (removes a missing path) |
//! | `wrong-uid` | allowed, echoing a uid other than the request's |
//! | `slow` | allowed, after a [`SLOW_DELAY`] pause (for client timeouts) |
//! | anything else, or none | allowed, without a patch |

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// How long the webhook stalls for a Service labelled `webhook=slow`.
pub const SLOW_DELAY: Duration = Duration::from_secs(3);

/// The IP the webhook assigns to a Service labelled `webhook=patch` that has none.
pub const PATCH_CLUSTER_IP: &str = "10.0.0.42";

/// A running test webhook; stopped (and its certificates deleted) when dropped.
pub struct TestWebhook {
    addr: SocketAddr,
    /// Holds the certificates.
    dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestWebhook {
    /// Starts an HTTPS AdmissionReview v1 server on 127.0.0.1:<free port>, serving `POST /mutate`.
    pub fn start() -> TestWebhook {
        let dir = tempfile::Builder::new()
            .prefix("svcplane-webhook-")
            .tempdir()
            .expect("create a directory for the webhook's certificates");
        let tls = crate::make_certs(dir.path());
        let certs = CertificateDer::pem_file_iter(&tls.server_cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .expect("read the webhook's certificate");
        let key = PrivateKeyDer::from_pem_file(&tls.server_key).expect("read the webhook's key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a TLS server configuration");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let addr = listener.local_addr().expect("the listener's address");

        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/mutate", post(review))
            .with_state(Arc::clone(&requests));
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("test-webhook".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("start the webhook's runtime");
                runtime.block_on(serve(listener, acceptor, app, stop));
                // Dropping the runtime cancels the connections still open.
            })
            .expect("start the webhook's thread");
        TestWebhook {
            addr,
            dir,
            ca: tls.ca,
            requests,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT/mutate`.
    pub fn url(&self) -> String {
        format!("https://{}/mutate", self.addr)
    }

    /// The PEM file of the CA that signed the webhook's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// Every AdmissionReview received (the whole body, `request` included), oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// The directory holding the certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestWebhook {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("register the listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            // A client that gives up on the handshake or the connection is no concern here.
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

async fn review(
    State(requests): State<Arc<Mutex<Vec<Value>>>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    requests.lock().unwrap().push(body.clone());
    let request = &body["request"];
    let uid = request["uid"].clone();
    let object = &request["object"];
    let label = object["metadata"]["labels"]["webhook"]
        .as_str()
        .unwrap_or("");
    let response = match label {
        "deny" => json!({
            "uid": uid,
            "allowed": false,
            "status": {
                "code": 422,
                "reason": "Invalid",
                "message": "the test webhook refuses Services labelled webhook=deny",
                "details": {"causes": [{
                    "reason": "FieldValueForbidden",
                    "field": "metadata.labels",
                    "message": "the test webhook refuses Services labelled webhook=deny",
                }]},
            },
        }),
        "forbid" => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": "the test webhook forbids Services labelled webhook=forbid"},
        }),
        "patch" => patched(uid, &patch_for(object)),
        "bad-patch" => patched(
            uid,
            &json!([{"op": "remove", "path": "/spec/no-such-field"}]),
        ),
        "wrong-uid" => json!({"uid": "not-the-request-uid", "allowed": true}),
        "slow" => {
            tokio::time::sleep(SLOW_DELAY).await;
            json!({"uid": uid, "allowed": true})
        }
        _ => json!({"uid": uid, "allowed": true}),
    };
    Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn patched(uid: Value, patch: &Value) -> Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
    json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": encoded})
}

/// The JSON Patch for `webhook=patch`: the annotation, and a cluster IP where there is none.
fn patch_for(object: &Value) -> Value {
    let mut ops = Vec::new();
    if object["metadata"]["annotations"].is_object() {
        ops.push(json!({
            "op": "add",
            "path": "/metadata/annotations/test-webhook~1seen",
            "value": "true",
        }));
    } else {
        ops.push(json!({
            "op": "add",
            "path": "/metadata/annotations",
            "value": {"test-webhook/seen": "true"},
        }));
    }
    let spec = &object["spec"];
    if !spec.is_object() {
        ops.push(json!({
            "op": "add",
            "path": "/spec",
            "value": {"clusterIP": PATCH_CLUSTER_IP, "clusterIPs": [PATCH_CLUSTER_IP]},
        }));
    } else {
        if spec["clusterIP"].as_str().unwrap_or("").is_empty() {
            ops.push(json!({"op": "add", "path": "/spec/clusterIP", "value": PATCH_CLUSTER_IP}));
        }
        if spec["clusterIPs"].as_array().is_none_or(Vec::is_empty) {
            ops.push(json!({
                "op": "add",
                "path": "/spec/clusterIPs",
                "value": [PATCH_CLUSTER_IP],
            }));
        }
    }
    Value::Array(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_adds_the_annotations_map_when_the_service_has_none() {
        let patch = patch_for(&json!({"metadata": {"name": "a"}, "spec": {"ports": []}}));
        assert_eq!(
            patch,
            json!([
                {"op": "add", "path": "/metadata/annotations", "value": {"test-webhook/seen": "true"}},
                {"op": "add", "path": "/spec/clusterIP", "value": "10.0.0.42"},
                {"op": "add", "path": "/spec/clusterIPs", "value": ["10.0.0.42"]},
            ])
        );
    }

    #[test]
    fn the_patch_keeps_existing_annotations_and_cluster_ips() {
        let patch = patch_for(&json!({
            "metadata": {"name": "a", "annotations": {"x": "y"}},
            "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"]},
        }));
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/metadata/annotations/test-webhook~1seen", "value": "true"}])
        );
    }

    #[test]
    fn the_webhook_serves_https_with_its_own_ca_and_stops_on_drop() {
        let webhook = TestWebhook::start();
        assert!(webhook.url().starts_with("https://127.0.0.1:"));
        assert!(webhook.url().ends_with("/mutate"));
        let pem = std::fs::read_to_string(webhook.ca_file()).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert!(webhook.requests().is_empty());
        let addr = webhook.addr;
        assert!(std::net::TcpStream::connect(addr).is_ok());
        drop(webhook);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    /// POSTs `body` to the webhook over HTTP/1.1 and returns the response's JSON body.
    async fn post(webhook: &TestWebhook, body: &Value) -> Value {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(webhook.ca_file()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let body = body.to_string();
        let head = format!(
            "POST /mutate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            webhook.addr,
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(body.as_bytes()).await.unwrap();
        let mut response = String::new();
        let _ = tls.read_to_string(&mut response).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let (_, json) = response.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(json).unwrap()
    }

    fn review(uid: &str, label: &str) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "operation": "CREATE",
                "object": {
                    "metadata": {"name": "a", "namespace": "default", "labels": {"webhook": label}},
                    "spec": {"ports": [{"port": 80}]},
                },
            },
        })
    }

    #[tokio::test]
    async fn the_webhook_echoes_the_uid_and_judges_by_the_webhook_label() {
        let webhook = TestWebhook::start();

        let allowed = post(&webhook, &review("u-1", "")).await;
        assert_eq!(allowed["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(allowed["kind"], "AdmissionReview");
        assert_eq!(allowed["response"], json!({"uid": "u-1", "allowed": true}));

        let denied = post(&webhook, &review("u-2", "deny")).await;
        assert_eq!(denied["response"]["uid"], "u-2");
        assert_eq!(denied["response"]["allowed"], false);
        assert_eq!(denied["response"]["status"]["code"], 422);
        assert_eq!(denied["response"]["status"]["reason"], "Invalid");

        let patched = post(&webhook, &review("u-3", "patch")).await;
        assert_eq!(patched["response"]["allowed"], true);
        assert_eq!(patched["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patched["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(patch.as_array().unwrap().len(), 3);

        let seen = webhook.requests();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1], review("u-2", "deny"));
    }
}
