//! The manifests feed: file shapes, conversion errors that name the file, object and field, and
//! atomic reloads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cache::manifests::{load, run};
use cache::{Cache, Key, Kind, ServiceKind};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.1.0.1]
";

#[test]
fn multi_document_yaml_lists_json_and_directories_load_together() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "a-web.yaml", WEB);
    write(
        &dir,
        "b-list.json",
        r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "empty"}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "apps"},
             "status": {"phase": "Running", "podIP": "10.1.0.9"}}
        ]}"#,
    );
    write(
        &dir,
        "c-other.yml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
    );
    write(&dir, "notes.txt", "not a manifest");
    let loaded = load(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(loaded.services.len(), 1);
    assert_eq!(
        loaded.services[0].key,
        Key::new("default", "web"),
        "namespace defaults to default"
    );
    assert_eq!(loaded.slices.len(), 1);
    assert_eq!(loaded.pods.len(), 1);
    let namespaces: Vec<&str> = loaded.namespaces.iter().map(|n| n.as_str()).collect();
    assert_eq!(
        namespaces,
        ["apps", "default", "empty"],
        "referenced namespaces exist without being listed"
    );
}

#[test]
fn endpoints_are_mirrored_only_for_services_without_slices() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "m.yaml",
        &format!(
            "{WEB}---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec: {{clusterIP: None}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: db}}
subsets: [{{addresses: [{{ip: 192.0.2.5}}], ports: [{{name: pg, port: 5432}}]}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web}}
subsets: [{{addresses: [{{ip: 192.0.2.6}}]}}]
"
        ),
    );
    let loaded = load(&[file]).unwrap();
    let mut owners: Vec<(String, String)> = loaded
        .slices
        .iter()
        .map(|s| {
            (
                s.service.as_deref().unwrap().to_string(),
                s.endpoints.get(0).unwrap().addresses[0].to_string(),
            )
        })
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        [
            ("db".to_string(), "192.0.2.5".to_string()),
            ("web".to_string(), "10.1.0.1".to_string())
        ]
    );
    assert_eq!(
        loaded
            .services
            .iter()
            .find(|s| s.key.name == "db")
            .unwrap()
            .kind,
        ServiceKind::Headless
    );
}

#[test]
fn invalid_manifests_name_the_file_the_object_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    // (content, the error must contain)
    let rows = [
        (
            "kind: Service\nmetadata: {name: w}\nspec: {ports: [{port: web}]}\n",
            "document 1 (Service default/w): spec.ports[0].port: invalid type: string \"web\"",
        ),
        (
            "kind: Service\nmetadata: {name: w}\nspec: {clusterIP: 10.0.0.500}\n",
            "document 1 (Service default/w): spec.clusterIP: \"10.0.0.500\" is not an IP address",
        ),
        (
            "---\n---\nmetadata: {name: w}\n",
            "document 2: kind: is required",
        ),
        (
            "kind: Service\nmetadata: {name: w}\n---\nkind: Service\nmetadata: {name: w}\n",
            "document 2 (Service default/w): defined twice",
        ),
        ("kind: Service\nmetadata: {name: w\n", "document 1:"),
        (
            "kind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: [{addresses: [nope]}]\n",
            "endpoints[0].addresses[0]: \"nope\" is not an IP address",
        ),
    ];
    for (i, (text, want)) in rows.iter().enumerate() {
        let file = write(&dir, &format!("bad{i}.yaml"), text);
        let err = load(std::slice::from_ref(&file)).unwrap_err().to_string();
        assert!(err.starts_with(&file.display().to_string()), "{err}");
        assert!(err.contains(want), "{text:?}: expected {want:?} in {err}");
    }
    let err = load(&[dir.path().join("missing.yaml")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.yaml") && err.contains("No such file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_changed_file_is_reloaded_as_one_step_and_a_broken_one_keeps_the_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "web.yaml", WEB);
    let cache = Arc::new(Cache::new(&[
        Kind::Namespaces,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::Pods,
    ]));
    let mut rx = cache.subscribe();
    let feed = tokio::spawn(run(
        cache.clone(),
        vec![file.clone()],
        Duration::from_millis(20),
    ));
    rx.wait_for(|s| s.synced).await.unwrap();
    assert!(cache.current().service("default", "web").is_some());

    // An atomic rewrite (write aside, rename over) is picked up.
    let aside = dir.path().join("web.yaml.tmp");
    std::fs::write(&aside, WEB.replace("10.96.0.20", "10.96.0.21")).unwrap();
    std::fs::rename(&aside, &file).unwrap();
    let snap = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| {
            s.service("default", "web").is_some_and(|w| {
                w.kind == ServiceKind::ClusterIp(["10.96.0.21".parse().unwrap()].into())
            })
        }),
    )
    .await
    .expect("the reload arrives")
    .unwrap()
    .clone();
    assert_eq!(
        snap.slices_of(&Key::new("default", "web")).count(),
        1,
        "the slice came in the same step"
    );

    // A broken file keeps what was loaded.
    std::fs::write(&file, "kind: Service\nmetadata: {name: web\n").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cache.current().service("default", "web").is_some());
    feed.abort();
}
