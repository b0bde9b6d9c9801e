//! What the Helm chart's tests share: the chart's path, the peers' helm in a home of its own,
//! rendered manifests as objects, a kubeconfig holding a token of one of the chart's
//! ServiceAccounts, and `svcplane dns` started on a rendered Corefile with only its listen
//! ports and the node's resolv.conf substituted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize as _;
use serde_json::Value;
use testkit::process::Watched;
use testkit::{Cluster, free_dns_port, free_port, peer};

/// `charts/svcplane` in this checkout.
pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/svcplane")
}

/// A command's stdout and stderr, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The peers' helm with its state in a fresh directory, against `kubeconfig` if given.
pub fn helm(kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("a home for helm");
    let mut command = Command::new(peer("helm"));
    command
        .args(args)
        .env("HOME", home.path())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    if let Some(kubeconfig) = kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    command.output().expect("run helm")
}

/// The objects of a multi-document YAML manifest.
pub fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The object of `kind` named `name`.
pub fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// Writes `content` to `dir/name`.
pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write a test file");
    path
}

/// A kubeconfig in `dir` for a token of the ServiceAccount `account` in `namespace`, issued by
/// kube-apiserver (TokenRequest, as a pod's projected token is).
pub fn account_kubeconfig(
    cluster: &Cluster,
    dir: &Path,
    namespace: &str,
    account: &str,
) -> PathBuf {
    let out = cluster.kubectl(
        "admin",
        &["-n", namespace, "create", "token", account, "--duration=1h"],
    );
    assert!(out.status.success(), "create token: {}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {account}\n  user:\n    token: {token}\ncontexts:\n- name: {account}\n  context:\n    cluster: test\n    user: {account}\ncurrent-context: {account}\n",
        server = cluster.url(),
        ca = cluster.ca().display(),
        token = token.trim(),
    );
    write(dir, &format!("{account}.kubeconfig"), &kubeconfig)
}

/// The loopback ports a `svcplane dns` of a rendered Corefile listens on instead of the pod's.
#[derive(Debug, Clone, Copy)]
pub struct DnsPorts {
    pub dns: u16,
    pub health: u16,
    pub ready: u16,
    pub metrics: u16,
}

impl DnsPorts {
    pub fn free() -> DnsPorts {
        DnsPorts {
            dns: free_dns_port(),
            health: free_port(),
            ready: free_port(),
            metrics: free_port(),
        }
    }
}

/// Starts `svcplane dns --conf corefile` as the chart's pod runs it, as the account of
/// `kubeconfig`, on `ports`; the node's resolv.conf becomes one naming an upstream that is not
/// there (for `forward` and `loop`). Its output goes to `dir/log`.
pub fn start_dns(
    dir: &Path,
    corefile: &Path,
    kubeconfig: &Path,
    ports: DnsPorts,
    log: &str,
) -> Watched {
    let resolv = write(
        dir,
        "resolv.conf",
        &format!("nameserver 127.0.0.1:{}\n", free_dns_port()),
    );
    let mut args: Vec<OsString> = vec!["dns".into(), "--conf".into(), corefile.into()];
    for (flag, value) in [
        ("--dns-port", ports.dns.to_string()),
        ("--bind", "127.0.0.1".to_string()),
        ("--health-port", ports.health.to_string()),
        ("--ready-port", ports.ready.to_string()),
        ("--metrics-port", ports.metrics.to_string()),
        ("--resolv-conf", resolv.display().to_string()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    Watched::spawn(
        Path::new(env!("CARGO_BIN_EXE_svcplane")),
        args,
        &[("KUBECONFIG", kubeconfig.to_str().expect("a UTF-8 path"))],
        &dir.join(log),
        None,
    )
}

/// GET `path` on a loopback port: the status and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// `dig +short` of `name`'s A records from the server on a loopback `port`.
pub fn dig_a(port: u16, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+time=2",
            "+tries=1",
            name,
            "A",
        ])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
