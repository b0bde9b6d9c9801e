//! `svcplane dev --allocation=webhook`: the allocation webhook of `svcplane controller`, served
//! in-process on a loopback port with certificates made at start, and the API server's webhook
//! client pointed at it, so the dev API server allocates through an AdmissionReview round trip
//! as kube-apiserver does (before naming a `generateName` create, never told of abandoned
//! writes; leaks are for repair).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use controller::ServiceAllocator;
use controller::metrics::Metrics;
use controller::webhook::{self, CertFiles, Webhook};
use ipam::store::Store;

use apiserver::admission_webhook::{FailurePolicy, WebhookAdmission};

/// How long the API server waits for the webhook (kube-apiserver's default `timeoutSeconds`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the webhook on a loopback port with certificates written to `dir`; the admission that
/// calls it.
pub(crate) async fn start<S: Store>(
    allocator: Arc<ServiceAllocator<S>>,
    dir: &Path,
    allocation_timeout: Duration,
    metrics: Arc<Metrics>,
) -> anyhow::Result<WebhookAdmission> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca, cert, key) = (
        dir.join("webhook-ca.crt"),
        dir.join("webhook.crt"),
        dir.join("webhook.key"),
    );
    write_certs(&ca, &cert, &key)?;
    let certs = CertFiles::load(&cert, &key).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("the allocation webhook cannot listen on loopback")?;
    let addr = listener.local_addr()?;
    let hook = Webhook {
        allocator,
        allocation_timeout,
        metrics,
    };
    tokio::spawn(webhook::serve(
        listener,
        webhook::tls_config(Arc::new(certs)),
        hook,
    ));
    WebhookAdmission::new(
        &format!("https://{addr}{}", webhook::WEBHOOK_PATH),
        Some(&ca),
        FailurePolicy::Fail,
        CALL_TIMEOUT,
    )
    .map(|client| client.named(WEBHOOK_NAME))
    .map_err(Into::into)
}

/// The name `svcplane dev` gives the webhook, as the Helm chart's configuration names it.
const WEBHOOK_NAME: &str = "allocation.svcplane.io";

/// A CA and a serving certificate for 127.0.0.1 signed by it, as PEM files.
fn write_certs(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "svcplane dev webhook CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "svcplane dev webhook");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    for (path, text) in [
        (ca, ca_cert.pem()),
        (cert, leaf_cert.pem()),
        (key, leaf_key.serialize_pem()),
    ] {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
