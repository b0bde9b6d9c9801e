//! CustomResourceDefinitions of the projects the Helm chart renders objects for —
//! prometheus-operator's ServiceMonitor and PodMonitor, cert-manager's Issuer and Certificate —
//! read from
//! those projects' own Go modules at pinned versions, which `go mod download` takes from the Go
//! module proxy into the module cache (once per machine).

use std::path::PathBuf;
use std::process::Command;

/// prometheus-operator's module and the version whose CRDs the tests install.
pub const PROMETHEUS_OPERATOR: (&str, &str) = (
    "github.com/prometheus-operator/prometheus-operator",
    "v0.85.0",
);
/// cert-manager's module and version.
pub const CERT_MANAGER: (&str, &str) = ("github.com/cert-manager/cert-manager", "v1.21.2");

/// The CRDs the chart's optional objects need, as YAML documents.
pub fn chart_crds() -> Vec<String> {
    [
        (
            PROMETHEUS_OPERATOR,
            "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        ),
        (
            PROMETHEUS_OPERATOR,
            "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        ),
        (CERT_MANAGER, "deploy/crds/cert-manager.io_issuers.yaml"),
        (
            CERT_MANAGER,
            "deploy/crds/cert-manager.io_certificates.yaml",
        ),
    ]
    .into_iter()
    .map(|((module, version), path)| {
        let file = module_dir(module, version).join(path);
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
    })
    .collect()
}

/// Where the module cache holds `module@version`, downloading it first if needed.
pub fn module_dir(module: &str, version: &str) -> PathBuf {
    let out = Command::new("go")
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        // Outside any module: nothing here is built, the module is only fetched.
        .current_dir(std::env::temp_dir())
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap_or_else(|e| panic!("run go (needed to fetch {module}@{version}): {e}"));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "go mod download {module}@{version}: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match info["Dir"].as_str() {
        Some(dir) => PathBuf::from(dir),
        None => panic!("go mod download {module}@{version}: {info}"),
    }
}
