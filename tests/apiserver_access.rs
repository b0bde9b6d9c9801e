//! What reaches `svcplane apiserver` and how: the loopback rule, TLS with bearer tokens, the
//! audit log, Service admission webhooks (patching, denying, down), and bad requests answered
//! with the right Status and no write.

mod support;

use std::process::Command;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::{ApiServer, Backend};
use testkit::webhook::{PATCH_CLUSTER_IP, TestWebhook};

#[test]
fn a_non_loopback_listen_without_tls_and_tokens_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = testkit::make_certs(dir.path());
    let cert = certs.server_cert.display().to_string();
    let key = certs.server_key.display().to_string();
    for extra in [
        vec![],
        vec![
            "--tls-cert-file",
            cert.as_str(),
            "--tls-key-file",
            key.as_str(),
        ],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_svcplane"))
            .args(["apiserver", "--listen", "0.0.0.0:6443"])
            .args(&extra)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = support::stderr(&output);
        assert!(
            stderr.contains("--listen: 0.0.0.0:6443 is not a loopback address; serving the API beyond this machine needs --tls-cert-file, --tls-key-file and --token-file"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn with_tls_and_tokens_a_request_needs_a_token_and_the_audit_log_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let certs = testkit::make_certs(dir.path());
    let tokens = support::write(
        dir.path(),
        "tokens.csv",
        "s3cret-token,alice,1001,\"admins\"\n",
    );
    let server = ApiServer::start(
        Backend::Memory,
        &[
            "--tls-cert-file",
            certs.server_cert.to_str().unwrap(),
            "--tls-key-file",
            certs.server_key.to_str().unwrap(),
            "--tls-ca-file",
            certs.ca.to_str().unwrap(),
            "--token-file",
            tokens.to_str().unwrap(),
        ],
    );
    // The written kubeconfig carries the CA and the token.
    let kubeconfig = std::fs::read_to_string(server.kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains(&format!("https://127.0.0.1:{}", server.port)),
        "{kubeconfig}"
    );
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "tls"}, "spec": {"ports": [{"port": 443}]}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
    let ok = server.kubectl(&["get", "svc", "tls", "-o", "name"]);
    assert_eq!(
        support::stdout(&ok),
        "service/tls\n",
        "{}\n{kubeconfig}",
        support::stderr(&ok)
    );
    // Without a token: 401.
    let kubeconfig_file = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig_file, &Default::default())
        .await
        .unwrap();
    config.auth_info = Default::default();
    let anonymous: Api<Service> = Api::default_namespaced(kube::Client::try_from(config).unwrap());
    match anonymous.list(&Default::default()).await.unwrap_err() {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"))
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // With a wrong one, kubectl reports it is not logged in.
    let empty = support::write(
        dir.path(),
        "empty-kubeconfig",
        "apiVersion: v1\nkind: Config\n",
    );
    let wrong = Command::new(support::kubectl())
        .args([
            "--kubeconfig",
            empty.to_str().unwrap(),
            "--server",
            &format!("https://127.0.0.1:{}", server.port),
        ])
        .args([
            "--certificate-authority",
            certs.ca.to_str().unwrap(),
            "--token",
            "not-the-token",
        ])
        .args([
            "--cache-dir",
            dir.path().join("c").to_str().unwrap(),
            "get",
            "svc",
        ])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert_eq!(
        support::stderr(&wrong).trim().lines().last(),
        Some(
            "error: You must be logged in to the server (the server has asked for the client to provide credentials)"
        )
    );
    let audit = server.audit();
    let create = audit
        .iter()
        .find(|a| a["verb"] == "create")
        .expect("the create is audited");
    assert_eq!(create["user"], "alice");
    assert_eq!(create["resource"], "services");
    assert_eq!(create["namespace"], "default");
    assert_eq!(create["name"], "");
    assert_eq!(create["code"], 201);
    assert!(
        create["userAgent"].is_string(),
        "kube-rs sends none, but the field is always there"
    );
    let get = audit
        .iter()
        .find(|a| a["verb"] == "get" && a["name"] == "tls")
        .expect("kubectl's get is audited");
    assert!(
        get["userAgent"].as_str().unwrap().starts_with("kubectl"),
        "{get}"
    );
    let refused = audit
        .iter()
        .find(|a| a["code"] == 401)
        .expect("the refused request is audited too");
    assert_eq!(
        (refused["verb"].as_str(), refused["resource"].as_str()),
        (Some("list"), Some("services"))
    );
}

fn labelled(name: &str, webhook: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  labels:\n    webhook: \"{webhook}\"\nspec:\n  ports:\n  - port: 80\n"
    )
}

#[tokio::test]
async fn webhooks_patch_and_deny_in_turn_and_a_denial_reaches_kubectl() {
    let first = TestWebhook::start();
    let second = TestWebhook::start();
    let ca = first.ca_file().to_str().unwrap().to_string();
    // Both test webhooks share one CA only if they made the same certs; give each its own flag
    // value by chaining through one CA bundle.
    let bundle = first.dir().join("bundle.pem");
    let text = std::fs::read_to_string(first.ca_file()).unwrap()
        + &std::fs::read_to_string(second.ca_file()).unwrap();
    std::fs::write(&bundle, text).unwrap();
    let _ = ca;
    let server = ApiServer::start(
        Backend::Memory,
        &[
            "--service-admission-webhook",
            &first.url(),
            "--service-admission-webhook",
            &second.url(),
            "--admission-ca",
            bundle.to_str().unwrap(),
        ],
    );
    let patched = support::write(
        server.dir.path(),
        "patched.yaml",
        &labelled("patched", "patch"),
    );
    let out = server.kubectl(&["create", "-f", patched.to_str().unwrap()]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let svc = api.get("patched").await.unwrap();
    assert_eq!(
        svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some(PATCH_CLUSTER_IP)
    );
    assert_eq!(
        svc.metadata.annotations.unwrap()["test-webhook/seen"],
        "true"
    );
    // The second webhook saw the first one's patch.
    let seen: Vec<Value> = second.requests();
    assert_eq!(
        seen.last().unwrap()["request"]["object"]["spec"]["clusterIP"],
        PATCH_CLUSTER_IP
    );
    assert_eq!(seen.last().unwrap()["request"]["operation"], "CREATE");

    let denied = support::write(
        server.dir.path(),
        "denied.yaml",
        &labelled("denied", "deny"),
    );
    let out = server.kubectl(&["create", "-f", denied.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    // The webhook's Status goes on as given, details included, as kube-apiserver passes it:
    // kubectl renders a 422 with field causes and no kind or name as "The request is invalid:"
    // and the causes.
    assert_eq!(
        support::stderr(&out).trim(),
        "The request is invalid: metadata.labels: the test webhook refuses Services labelled webhook=deny"
    );
    assert!(
        api.get_opt("denied").await.unwrap().is_none(),
        "a denied create writes nothing"
    );
    // Other codes come through as "Error from server (<reason>)".
    let forbidden = support::write(
        server.dir.path(),
        "forbidden.yaml",
        &labelled("forbidden", "forbid"),
    );
    let out = server.kubectl(&["create", "-f", forbidden.to_str().unwrap()]);
    assert_eq!(
        support::stderr(&out).trim(),
        format!(
            "Error from server (Forbidden): error when creating \"{}\": admission webhook \"127.0.0.1\" denied the request: the test webhook forbids Services labelled webhook=forbid",
            forbidden.display()
        )
    );
    // Updates go through the webhooks too, with the old object.
    let out = server.kubectl(&["label", "svc", "patched", "webhook=deny", "--overwrite"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::stdout(&out));
    assert_eq!(
        api.get("patched").await.unwrap().metadata.labels.unwrap()["webhook"],
        "patch"
    );
}

#[tokio::test]
async fn a_webhook_that_is_down_fails_creates_unless_the_policy_is_ignore() {
    let webhook = TestWebhook::start();
    let url = webhook.url();
    let kept = tempfile::tempdir().unwrap();
    let ca = kept.path().join("ca.pem");
    std::fs::copy(webhook.ca_file(), &ca).unwrap();
    drop(webhook);
    let closed = ApiServer::start(
        Backend::Memory,
        &[
            "--service-admission-webhook",
            &url,
            "--admission-ca",
            ca.to_str().unwrap(),
        ],
    );
    let manifest = support::write(closed.dir.path(), "svc.yaml", &labelled("down", "none"));
    let out = closed.kubectl(&["create", "-f", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = support::stderr(&out);
    assert!(
        stderr.contains("Error from server (InternalError)")
            && stderr.contains("failed calling webhook \"127.0.0.1\": failed to call webhook"),
        "{stderr}"
    );
    assert!(
        closed.kubectl(&["get", "svc", "down"]).status.code() == Some(1),
        "nothing was stored"
    );
    let open = ApiServer::start(
        Backend::Memory,
        &[
            "--service-admission-webhook",
            &url,
            "--admission-ca",
            ca.to_str().unwrap(),
            "--admission-failure-policy",
            "ignore",
        ],
    );
    let out = open.kubectl(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(
        open.log().contains("failed calling webhook"),
        "the ignored failure is logged"
    );
}

/// One raw request; returns status and body as JSON.
fn call(
    server: &ApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let (status, text) = support::http(
        server.port,
        method,
        path,
        &[("Content-Type", content_type)],
        Some(body),
    )
    .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_status(answer: &(u16, Value), code: u16, reason: &str, message: &str) {
    assert_eq!(answer.0, code, "{}", answer.1);
    assert_eq!(answer.1["kind"], "Status");
    assert_eq!(answer.1["reason"], reason, "{}", answer.1);
    assert_eq!(answer.1["message"], message, "{}", answer.1);
}

async fn bad_requests_get_the_right_status_and_change_nothing(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let services = "/api/v1/namespaces/default/services";
    let json = "application/json";
    let created = call(
        &server,
        "POST",
        services,
        json,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"good"},"spec":{"clusterIP":"10.0.0.5","ports":[{"name":"a","port":80}]}}"#,
    );
    assert_eq!(created.0, 201, "{}", created.1);
    let rv_before = created.1["metadata"]["resourceVersion"].clone();

    let answer = call(
        &server,
        "POST",
        services,
        json,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"#,
    );
    assert_eq!(
        (answer.0, answer.1["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .starts_with("couldn't get version/kind; json parse error")
    );
    let answer = call(
        &server,
        "POST",
        services,
        "application/yaml",
        "metadata: {name: [x\nspec: :",
    );
    assert_eq!(
        (answer.0, answer.1["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    let answer = call(
        &server,
        "POST",
        &format!("{services}?fieldValidation=Strict"),
        json,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"strict"},"spec":{"foo":1,"ports":[{"port":80}]}}"#,
    );
    assert_status(
        &answer,
        400,
        "BadRequest",
        "strict decoding error: unknown field \"spec.foo\"",
    );
    let answer = call(
        &server,
        "POST",
        services,
        json,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"zero"},"spec":{"ports":[{"port":0}]}}"#,
    );
    // As upstream, the defaulted targetPort (the port, 0) is invalid too.
    assert_status(
        &answer,
        422,
        "Invalid",
        "Service \"zero\" is invalid: [spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive]",
    );
    assert_eq!(
        answer.1["details"]["causes"][0]["field"],
        "spec.ports[0].port"
    );
    let answer = call(
        &server,
        "POST",
        services,
        json,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dup"},"spec":{"ports":[{"name":"a","port":80},{"name":"a","port":81}]}}"#,
    );
    assert_status(
        &answer,
        422,
        "Invalid",
        "Service \"dup\" is invalid: spec.ports[1].name: Duplicate value: \"a\"",
    );
    let answer = call(
        &server,
        "PUT",
        &format!("{services}/good"),
        json,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"good"},"spec":{"clusterIP":"10.0.0.6","ports":[{"name":"a","port":80}]}}"#,
    );
    assert_eq!(
        (answer.0, answer.1["reason"].as_str()),
        (422, Some("Invalid")),
        "{}",
        answer.1
    );
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains("spec.clusterIPs[0]: Invalid value: \"10.0.0.6\": may not change once set"),
        "{}",
        answer.1
    );
    let answer = call(
        &server,
        "POST",
        services,
        json,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pod"},"spec":{"containers":[]}}"#,
    );
    assert_eq!(
        (answer.0, answer.1["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .starts_with("Pod in version \"v1\" cannot be handled as a Service"),
        "{}",
        answer.1
    );
    let answer = call(
        &server,
        "POST",
        services,
        json,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"elsewhere","namespace":"kube-system"},"spec":{"ports":[{"port":80}]}}"#,
    );
    assert_status(
        &answer,
        400,
        "BadRequest",
        "the namespace of the provided object does not match the namespace sent on the request",
    );
    let answer = call(
        &server,
        "POST",
        "/api/v1/namespaces/nope/services",
        json,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"lost"},"spec":{"ports":[{"port":80}]}}"#,
    );
    assert_status(&answer, 404, "NotFound", "namespaces \"nope\" not found");
    let answer = call(
        &server,
        "PATCH",
        &format!("{services}/good"),
        "application/apply-patch+yaml",
        "{}",
    );
    assert_eq!(
        (answer.0, answer.1["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let answer = call(
        &server,
        "POST",
        &format!("{services}?dryRun=Some"),
        json,
        "{}",
    );
    assert_eq!(answer.0, 400);
    let answer = call(
        &server,
        "GET",
        "/api/v1/namespaces/default/replicasets",
        json,
        "",
    );
    assert_status(
        &answer,
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    // An empty namespace is not skipped over into another path.
    let answer = call(&server, "GET", "/api/v1/namespaces//services", json, "");
    assert_status(
        &answer,
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    // The namespaces every cluster has stay, and namespaces go one at a time.
    let answer = call(&server, "DELETE", "/api/v1/namespaces/default", json, "");
    assert_status(
        &answer,
        403,
        "Forbidden",
        "namespaces \"default\" is forbidden: this namespace may not be deleted",
    );
    let answer = call(&server, "DELETE", "/api/v1/namespaces", json, "");
    assert_status(
        &answer,
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    );

    // Nothing changed.
    let (status, list) = call(&server, "GET", services, json, "");
    assert_eq!(status, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["good"]);
    assert_eq!(list["items"][0]["metadata"]["resourceVersion"], rv_before);
    assert_eq!(list["items"][0]["spec"]["clusterIP"], "10.0.0.5");
    let (_, ns) = call(&server, "GET", "/api/v1/namespaces/nope", json, "");
    assert_eq!(ns["reason"], "NotFound");
}

mod memory {
    #[tokio::test]
    async fn bad_requests_get_the_right_status_and_change_nothing() {
        super::bad_requests_get_the_right_status_and_change_nothing(super::Backend::Memory).await
    }
}

mod etcd {
    #[tokio::test]
    async fn bad_requests_get_the_right_status_and_change_nothing() {
        super::bad_requests_get_the_right_status_and_change_nothing(super::Backend::Etcd).await
    }
}

#[test]
fn a_kept_alive_connection_may_idle_but_one_that_never_sends_headers_is_closed() {
    use std::io::{Read, Write};
    let server = ApiServer::start(Backend::Memory, &["--request-header-timeout", "2s"]);
    // Idle below the timeout: the same connection serves the next request.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let request = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut reply = [0u8; 4096];
    for _ in 0..2 {
        stream.write_all(request).unwrap();
        let n = stream.read(&mut reply).unwrap();
        assert!(
            reply[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&reply[..n])
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // Half a request and then nothing: closed once the timeout passes, not held forever.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stalled
        .write_all(b"GET /version HTTP/1.1\r\nHost:")
        .unwrap();
    let started = std::time::Instant::now();
    let n = stalled.read(&mut reply).unwrap_or(0);
    let text = String::from_utf8_lossy(&reply[..n]).to_string();
    assert!(
        n == 0 || text.starts_with("HTTP/1.1 408"),
        "closed or 408, got {text:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "closed by the server's timeout"
    );
}
