//! The HTTPS client of a Kubernetes mutating admission webhook for Services
//! (`--service-admission-webhook`): each Service create and update is sent as an
//! `admission.k8s.io/v1` AdmissionReview, and the webhook's JSONPatch applied, or its refusal
//! returned, as kube-apiserver does — including the failure policy for a webhook that cannot be
//! reached or answers nonsense.

use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use crate::admission::{AdmissionRequest, Denial, Operation, ServiceAdmission};
use crate::server::{ConfigError, config_error};

/// The largest webhook response read.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// What to do when the webhook cannot be called or its answer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse the write with a 500 InternalError.
    Fail,
    /// Log a warning and admit the Service unchanged.
    Ignore,
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;

    /// `Fail` or `Ignore`, as a webhook configuration spells them (any case).
    fn from_str(text: &str) -> Result<FailurePolicy, String> {
        match text.to_ascii_lowercase().as_str() {
            "fail" => Ok(FailurePolicy::Fail),
            "ignore" => Ok(FailurePolicy::Ignore),
            _ => Err(format!(
                "{text:?} is not a failure policy; use Fail or Ignore"
            )),
        }
    }
}

/// A mutating admission webhook called over HTTPS.
pub struct WebhookAdmission {
    url: String,
    uri: hyper::Uri,
    /// The webhook's name in messages (upstream's `webhooks[].name`): the URL's host unless
    /// [`WebhookAdmission::named`].
    host: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    failure_policy: FailurePolicy,
    timeout: Duration,
}

impl WebhookAdmission {
    /// The webhook named `name` in messages, as a `MutatingWebhookConfiguration` names it.
    pub fn named(mut self, name: &str) -> WebhookAdmission {
        self.host = name.to_string();
        self
    }

    /// A client of the webhook at `url` (https only), trusting only the certificates of the PEM
    /// bundle `ca_file` (required), waiting at most `timeout` for each call (upstream's default is
    /// 10 s).
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        failure_policy: FailurePolicy,
        timeout: Duration,
    ) -> Result<WebhookAdmission, ConfigError> {
        const FLAG: &str = "--service-admission-webhook";
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| config_error(FLAG, format!("{url:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(config_error(
                FLAG,
                format!("{url:?} must be an https:// URL"),
            ));
        }
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
            return Err(config_error(FLAG, format!("{url:?} has no host")));
        };
        let host = host.to_string();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(config_error(
                FLAG,
                format!("{url:?} must not carry user information"),
            ));
        }
        let Some(ca_file) = ca_file else {
            return Err(config_error(
                "--admission-ca",
                "required with --service-admission-webhook: \
                 the PEM bundle of the CA that signed the webhook's certificate",
            ));
        };
        let roots = load_roots(ca_file)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(FLAG, format!("TLS protocol versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_all_versions()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(WebhookAdmission {
            url: url.to_string(),
            uri,
            host,
            client,
            failure_policy,
            timeout,
        })
    }

    async fn review(&self, request: AdmissionRequest) -> Result<Value, Denial> {
        let uid = crate::object::new_uid();
        let review = review_body(&uid, &request);
        match self.call(&uid, &review).await {
            Ok(Verdict::Allowed(None)) => Ok(request.object),
            Ok(Verdict::Allowed(Some(patch))) => match apply_patch(&request.object, &patch) {
                Ok(patched) => Ok(patched),
                Err(err) => self.failed(&request, err),
            },
            Ok(Verdict::Denied(status)) => Err(self.denial(&status)),
            Err(err) => self.failed(&request, err),
        }
    }

    /// Sends the AdmissionReview and reads the webhook's response.
    async fn call(&self, uid: &str, review: &Value) -> Result<Verdict, String> {
        let post = |err: &dyn Display| format!("Post \"{}\": {err}", self.url);
        let http = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(review.to_string())))
            .map_err(|e| post(&e))?;
        let exchange = async {
            let response = self
                .client
                .request(http)
                .await
                .map_err(|e| post(&chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| post(&format!("reading the response: {e}")))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                post(&format!(
                    "context deadline exceeded (no response within {:?})",
                    self.timeout
                ))
            })??;
        if status != hyper::StatusCode::OK {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(format!(
                "the server responded with the status code {} but not an AdmissionReview: {}",
                status.as_u16(),
                excerpt.trim()
            ));
        }
        parse_response(uid, &body)
    }

    /// The refusal of a webhook that said no, worded as upstream's.
    fn denial(&self, status: &Value) -> Denial {
        let code = match status["code"].as_u64().unwrap_or(0) {
            0 => 403,
            code if code < 400 => 400,
            code => u16::try_from(code).unwrap_or(500),
        };
        let text = |key: &str| status[key].as_str().unwrap_or("").to_string();
        let (message, reason) = (text("message"), text("reason"));
        let denied_by = format!("admission webhook {:?} denied the request", self.host);
        let message = if !message.is_empty() {
            format!("{denied_by}: {message}")
        } else if !reason.is_empty() {
            format!("{denied_by}: {reason}")
        } else {
            format!("{denied_by} without explanation")
        };
        let reason = if reason.is_empty() {
            reason_for(code).to_string()
        } else {
            reason
        };
        let field = status["details"]["causes"]
            .as_array()
            .and_then(|causes| causes.first())
            .and_then(|cause| cause["field"].as_str())
            .filter(|field| !field.is_empty())
            .map(str::to_string);
        // kube-apiserver passes the Status's details on as they are.
        let details = status
            .get("details")
            .filter(|d| d.as_object().is_some_and(|d| !d.is_empty()))
            .cloned();
        Denial {
            code,
            reason,
            message,
            field,
            details,
        }
    }

    /// A webhook that could not be called or answered unusably, under the failure policy.
    fn failed(&self, request: &AdmissionRequest, err: String) -> Result<Value, Denial> {
        match self.failure_policy {
            FailurePolicy::Fail => Err(Denial {
                code: 500,
                reason: "InternalError".to_string(),
                message: format!(
                    "Internal error occurred: failed calling webhook {:?}: \
                     failed to call webhook: {err}",
                    self.host
                ),
                field: None,
                details: None,
            }),
            FailurePolicy::Ignore => {
                tracing::warn!(
                    webhook = %self.url,
                    namespace = %request.namespace,
                    name = %request.name,
                    operation = request.operation.as_str(),
                    "failed calling webhook, failing open (failure policy Ignore): {err}"
                );
                Ok(request.object.clone())
            }
        }
    }
}

impl ServiceAdmission for WebhookAdmission {
    fn name(&self) -> &str {
        &self.url
    }

    /// Called as kube-apiserver calls webhooks: before naming, UID and validation.
    fn before_naming(&self) -> bool {
        true
    }

    fn admit(&self, request: AdmissionRequest) -> BoxFuture<'_, Result<Value, Denial>> {
        Box::pin(self.review(request))
    }
}

/// What the webhook decided.
#[derive(Debug)]
enum Verdict {
    /// Allowed, with the JSON Patch to apply if any.
    Allowed(Option<json_patch::Patch>),
    /// Refused, with the response's `status` (`null` if absent).
    Denied(Value),
}

fn load_roots(ca_file: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let shown = ca_file.display();
    let refused = |what: String| config_error("--admission-ca", format!("{shown}: {what}"));
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| refused(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("not a PEM bundle: {e}")))?;
    if certs.is_empty() {
        return Err(refused("no certificate in it".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| refused(format!("an unusable certificate: {e}")))?;
    }
    Ok(roots)
}

/// The AdmissionReview sent for `request`.
fn review_body(uid: &str, request: &AdmissionRequest) -> Value {
    let kind = json!({"group": "", "version": "v1", "kind": "Service"});
    let resource = json!({"group": "", "version": "v1", "resource": "services"});
    let options_kind = match request.operation {
        Operation::Create => "CreateOptions",
        Operation::Update => "UpdateOptions",
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": request.name,
            "namespace": request.namespace,
            "operation": request.operation.as_str(),
            "userInfo": {"username": "system:svcplane-apiserver"},
            "object": request.object,
            "oldObject": request.old_object,
            "dryRun": request.dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind},
        },
    })
}

/// Reads an AdmissionReview response, checked as upstream checks a v1 one.
fn parse_response(uid: &str, body: &[u8]) -> Result<Verdict, String> {
    let invalid = |e: &dyn Display| format!("received invalid webhook response: {e}");
    let review: Value = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
    let (api_version, kind) = (
        review["apiVersion"].as_str().unwrap_or(""),
        review["kind"].as_str().unwrap_or(""),
    );
    if (api_version, kind) != ("admission.k8s.io/v1", "AdmissionReview") {
        return Err(invalid(&format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, \
             got {api_version}, Kind={kind}"
        )));
    }
    let response = &review["response"];
    if !response.is_object() {
        return Err(invalid(&"webhook response was absent"));
    }
    let got = response["uid"].as_str().unwrap_or("");
    if got != uid {
        return Err(invalid(&format!(
            "expected response.uid={uid:?}, got {got:?}"
        )));
    }
    let Some(allowed) = response["allowed"].as_bool() else {
        return Err(invalid(&"response.allowed is not a boolean"));
    };
    if !allowed {
        return Ok(Verdict::Denied(response["status"].clone()));
    }
    let patch = match &response["patch"] {
        Value::Null => return Ok(Verdict::Allowed(None)),
        Value::String(patch) if patch.is_empty() => return Ok(Verdict::Allowed(None)),
        Value::String(patch) => patch,
        _ => return Err(invalid(&"response.patch is not a base64 string")),
    };
    match response["patchType"].as_str() {
        Some("JSONPatch") => {}
        None => {
            return Err(invalid(
                &"webhook returned response.patch but not response.patchType",
            ));
        }
        Some(other) => {
            return Err(invalid(&format!(
                "webhook returned invalid response.patchType of {other:?}"
            )));
        }
    }
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| invalid(&format!("response.patch is not base64: {e}")))?;
    let patch: json_patch::Patch = serde_json::from_slice(&patch)
        .map_err(|e| invalid(&format!("response.patch is not a JSON Patch: {e}")))?;
    Ok(Verdict::Allowed(Some(patch)))
}

/// The object with the webhook's patch applied; it must remain a JSON object.
fn apply_patch(object: &Value, patch: &json_patch::Patch) -> Result<Value, String> {
    let mut patched = object.clone();
    json_patch::patch(&mut patched, patch)
        .map_err(|e| format!("the webhook's JSON Patch cannot be applied: {e}"))?;
    if !patched.is_object() {
        return Err("the webhook's JSON Patch replaced the Service with a non-object".into());
    }
    Ok(patched)
}

/// An error and its causes, as `outer: inner: ...` (hyper's own message alone says little).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The Status reason of an HTTP code, for a denial that names none.
fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::webhook::TestWebhook;

    fn client(webhook: &TestWebhook, policy: FailurePolicy) -> WebhookAdmission {
        WebhookAdmission::new(
            &webhook.url(),
            Some(webhook.ca_file()),
            policy,
            Duration::from_secs(10),
        )
        .unwrap()
    }

    fn service(label: Option<&str>) -> Value {
        let mut service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]},
        });
        if let Some(label) = label {
            service["metadata"]["labels"] = json!({"webhook": label});
        }
        service
    }

    fn create(object: Value) -> AdmissionRequest {
        AdmissionRequest {
            uid: "3b1a9e1c-0d7e-4b43-9d4c-5f0f2a1e7c11".into(),
            operation: Operation::Create,
            namespace: "shop".into(),
            name: "web".into(),
            object,
            old_object: None,
            dry_run: false,
        }
    }

    fn assert_internal_error(denial: &Denial, detail: &str) {
        assert_eq!(denial.code, 500, "{denial:?}");
        assert_eq!(denial.reason, "InternalError");
        assert_eq!(denial.field, None);
        let prefix = "Internal error occurred: failed calling webhook \"127.0.0.1\": \
                      failed to call webhook: ";
        assert!(denial.message.starts_with(prefix), "{}", denial.message);
        assert!(
            denial.message.contains(detail),
            "{:?} lacks {detail:?}",
            denial.message
        );
    }

    #[tokio::test]
    async fn an_allowed_service_is_stored_unchanged_and_the_review_says_what_upstream_sends() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Fail);
        assert_eq!(admission.name(), webhook.url());
        let object = service(None);
        let mut request = create(object.clone());
        request.dry_run = true;
        assert_eq!(admission.admit(request).await, Ok(object.clone()));

        let seen = webhook.requests();
        assert_eq!(seen.len(), 1);
        let review = &seen[0];
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        let sent = &review["request"];
        let uid = sent["uid"].as_str().unwrap();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        let kind = json!({"group": "", "version": "v1", "kind": "Service"});
        let resource = json!({"group": "", "version": "v1", "resource": "services"});
        assert_eq!(sent["kind"], kind);
        assert_eq!(sent["requestKind"], kind);
        assert_eq!(sent["resource"], resource);
        assert_eq!(sent["requestResource"], resource);
        assert_eq!(sent["name"], "web");
        assert_eq!(sent["namespace"], "shop");
        assert_eq!(sent["operation"], "CREATE");
        assert_eq!(
            sent["userInfo"],
            json!({"username": "system:svcplane-apiserver"})
        );
        assert_eq!(sent["object"], object);
        assert_eq!(sent["oldObject"], Value::Null);
        assert_eq!(sent["dryRun"], true);
        assert_eq!(
            sent["options"],
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"})
        );
    }

    #[tokio::test]
    async fn an_update_sends_the_old_object_and_update_options_with_a_fresh_uid_each_call() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Fail);
        let old = service(None);
        let mut new = service(None);
        new["spec"]["ports"][0]["port"] = json!(8080);
        for _ in 0..2 {
            let request = AdmissionRequest {
                operation: Operation::Update,
                old_object: Some(old.clone()),
                ..create(new.clone())
            };
            assert_eq!(admission.admit(request).await, Ok(new.clone()));
        }
        let seen = webhook.requests();
        let sent = &seen[0]["request"];
        assert_eq!(sent["operation"], "UPDATE");
        assert_eq!(sent["oldObject"], old);
        assert_eq!(sent["object"], new);
        assert_eq!(sent["dryRun"], false);
        assert_eq!(sent["options"]["kind"], "UpdateOptions");
        assert_ne!(seen[0]["request"]["uid"], seen[1]["request"]["uid"]);
    }

    #[tokio::test]
    async fn the_webhooks_patch_is_applied_to_the_stored_object() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Fail);
        let object = service(Some("patch"));
        let patched = admission.admit(create(object.clone())).await.unwrap();
        let mut expected = object;
        expected["metadata"]["annotations"] = json!({"test-webhook/seen": "true"});
        expected["spec"]["clusterIP"] = json!("10.0.0.42");
        expected["spec"]["clusterIPs"] = json!(["10.0.0.42"]);
        assert_eq!(patched, expected);
    }

    #[tokio::test]
    async fn the_patch_adds_to_existing_annotations_and_keeps_an_allocated_cluster_ip() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Fail);
        let mut object = service(Some("patch"));
        object["metadata"]["annotations"] = json!({"owner": "team-a"});
        object["spec"]["clusterIP"] = json!("10.0.0.9");
        object["spec"]["clusterIPs"] = json!(["10.0.0.9"]);
        let patched = admission.admit(create(object.clone())).await.unwrap();
        let mut expected = object;
        expected["metadata"]["annotations"]["test-webhook/seen"] = json!("true");
        assert_eq!(patched, expected);
    }

    #[tokio::test]
    async fn a_denial_carries_the_webhooks_code_reason_message_and_field() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Fail);
        let denial = admission
            .admit(create(service(Some("deny"))))
            .await
            .unwrap_err();
        assert_eq!(
            denial,
            Denial {
                code: 422,
                reason: "Invalid".into(),
                message: "admission webhook \"127.0.0.1\" denied the request: \
                          the test webhook refuses Services labelled webhook=deny"
                    .into(),
                field: Some("metadata.labels".into()),
                details: Some(json!({"causes": [{
                    "reason": "FieldValueForbidden",
                    "field": "metadata.labels",
                    "message": "the test webhook refuses Services labelled webhook=deny",
                }]})),
            }
        );
    }

    #[tokio::test]
    async fn a_denial_is_not_subject_to_the_ignore_failure_policy() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Ignore);
        let denial = admission
            .admit(create(service(Some("deny"))))
            .await
            .unwrap_err();
        assert_eq!(denial.code, 422);
    }

    #[tokio::test]
    async fn a_webhook_that_is_down_fails_the_write_with_a_clear_internal_error() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Fail);
        let url = webhook.url();
        drop(webhook);
        let denial = admission.admit(create(service(None))).await.unwrap_err();
        assert_internal_error(&denial, &format!("Post \"{url}\": "));
        assert!(
            denial.message.contains("Connection refused"),
            "{}",
            denial.message
        );
    }

    #[tokio::test]
    async fn a_webhook_that_is_down_admits_the_service_unchanged_under_ignore() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Ignore);
        drop(webhook);
        let object = service(Some("patch"));
        assert_eq!(admission.admit(create(object.clone())).await, Ok(object));
    }

    #[tokio::test]
    async fn a_webhook_slower_than_the_timeout_fails_the_write() {
        let webhook = TestWebhook::start();
        let admission = WebhookAdmission::new(
            &webhook.url(),
            Some(webhook.ca_file()),
            FailurePolicy::Fail,
            Duration::from_millis(300),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let denial = admission
            .admit(create(service(Some("slow"))))
            .await
            .unwrap_err();
        assert!(started.elapsed() < testkit::webhook::SLOW_DELAY);
        assert_internal_error(&denial, "context deadline exceeded");
    }

    /// A Service labelled `label` fails the write with `detail` under `Fail`, and is admitted
    /// unchanged under `Ignore`.
    async fn fails_unless_ignored(webhook: &TestWebhook, label: &str, detail: &str) {
        let fail = client(webhook, FailurePolicy::Fail);
        let denial = fail.admit(create(service(Some(label)))).await.unwrap_err();
        assert_internal_error(&denial, detail);
        let ignore = client(webhook, FailurePolicy::Ignore);
        let object = service(Some(label));
        assert_eq!(ignore.admit(create(object.clone())).await, Ok(object));
    }

    #[tokio::test]
    async fn a_response_with_another_uid_is_a_failure() {
        let webhook = TestWebhook::start();
        fails_unless_ignored(&webhook, "wrong-uid", "got \"not-the-request-uid\"").await;
    }

    #[tokio::test]
    async fn a_patch_that_cannot_be_applied_is_a_failure() {
        let webhook = TestWebhook::start();
        fails_unless_ignored(&webhook, "bad-patch", "JSON Patch cannot be applied").await;
    }

    #[tokio::test]
    async fn a_webhook_whose_certificate_the_ca_did_not_sign_is_a_failure() {
        let webhook = TestWebhook::start();
        let stranger = TestWebhook::start();
        let admission = WebhookAdmission::new(
            &webhook.url(),
            Some(stranger.ca_file()),
            FailurePolicy::Fail,
            Duration::from_secs(10),
        )
        .unwrap();
        let denial = admission.admit(create(service(None))).await.unwrap_err();
        assert_internal_error(&denial, "certificate");
        assert!(webhook.requests().is_empty());
    }

    /// Why a client of `url` trusting `ca` cannot be made.
    fn refusal(url: &str, ca: Option<&Path>) -> String {
        WebhookAdmission::new(url, ca, FailurePolicy::Fail, Duration::from_secs(10))
            .err()
            .expect("refused")
            .to_string()
    }

    #[test]
    fn an_http_url_is_refused_naming_the_flag() {
        let err = refusal("http://127.0.0.1:8443/mutate", None);
        assert!(err.contains("--service-admission-webhook"), "{err}");
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn an_https_url_without_a_ca_file_is_refused_naming_the_flag() {
        let err = refusal("https://127.0.0.1:8443/mutate", None);
        assert!(err.contains("--admission-ca: required"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = refusal("https://127.0.0.1:8443/mutate", Some(empty.as_path()));
        assert!(err.contains("--admission-ca"), "{err}");
    }

    #[test]
    fn a_denial_without_explanation_is_a_forbidden_worded_as_upstream() {
        let webhook = TestWebhook::start();
        let admission = client(&webhook, FailurePolicy::Fail);
        assert_eq!(
            admission.denial(&Value::Null),
            Denial {
                code: 403,
                reason: "Forbidden".into(),
                message: "admission webhook \"127.0.0.1\" denied the request without explanation"
                    .into(),
                field: None,
                details: None,
            }
        );
        let denial = admission.denial(&json!({"code": 200, "reason": "NotToday"}));
        assert_eq!(denial.code, 400);
        assert_eq!(denial.reason, "NotToday");
        assert_eq!(
            denial.message,
            "admission webhook \"127.0.0.1\" denied the request: NotToday"
        );
    }

    #[test]
    fn a_response_is_checked_for_kind_uid_and_patch_type() {
        let ok = |response: Value| {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
                .to_string()
        };
        let parse = |body: String| parse_response("u", body.as_bytes());
        assert!(matches!(
            parse(ok(json!({"uid": "u", "allowed": true}))),
            Ok(Verdict::Allowed(None))
        ));
        let err =
            parse(json!({"response": {"uid": "u", "allowed": true}}).to_string()).unwrap_err();
        assert!(
            err.contains("expected webhook response of admission.k8s.io/v1"),
            "{err}"
        );
        let err = parse(ok(json!({"uid": "v", "allowed": true}))).unwrap_err();
        assert!(
            err.contains("expected response.uid=\"u\", got \"v\""),
            "{err}"
        );
        let patch = base64::engine::general_purpose::STANDARD.encode("[]");
        let err = parse(ok(json!({"uid": "u", "allowed": true, "patch": patch}))).unwrap_err();
        assert!(err.contains("not response.patchType"), "{err}");
        let err = parse(ok(
            json!({"uid": "u", "allowed": true, "patch": patch, "patchType": "Merge"}),
        ))
        .unwrap_err();
        assert!(err.contains("invalid response.patchType"), "{err}");
        let err = parse("{".to_string()).unwrap_err();
        assert!(
            err.starts_with("received invalid webhook response: "),
            "{err}"
        );
    }
}
