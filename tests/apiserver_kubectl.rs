//! `svcplane apiserver` driven by kubectl 1.37 (the peers' v1.37.2), once on memory storage and once on a real etcd:
//! discovery, create/get/apply/label/annotate/patch/replace/delete, Tables, watches, namespaces
//! and refusals, each checked against the exact output and exit code kubectl gives (checks 1-16
//! of the API server spec).

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ApiServer, Backend, stderr, stdout, write};

/// How long anything asynchronous may take before a test gives up.
const BOUND: Duration = Duration::from_secs(20);

const SVC: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: foo
  labels:
    app: foo
spec:
  selector:
    app: foo
  ports:
  - port: 80
    targetPort: 8080
";

/// Runs kubectl, asserts exit 0 and returns stdout.
fn ok(server: &ApiServer, args: &[&str]) -> String {
    let out = server.kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} exited with {}: {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs kubectl, asserts exit 1 with nothing on stdout and returns stderr.
fn fails(server: &ApiServer, args: &[&str]) -> String {
    let out = server.kubectl(args);
    assert_failed(args, &out)
}

fn assert_failed(args: &[&str], out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "kubectl {args:?}: {}{}",
        stdout(out),
        stderr(out)
    );
    assert_eq!(stdout(out), "", "kubectl {args:?} printed on stdout");
    stderr(out)
}

/// `kubectl get <args> -o json`, parsed.
fn get_json(server: &ApiServer, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&ok(server, &all)).expect("kubectl prints JSON")
}

/// The names `kubectl get <resource> -o name` lists.
fn names(server: &ApiServer, args: &[&str]) -> Vec<String> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "name"]);
    ok(server, &all).lines().map(str::to_string).collect()
}

/// Writes a file into the server's directory and returns its path as kubectl is given it.
fn file(server: &ApiServer, name: &str, text: &str) -> String {
    write(server.dir.path(), name, text)
        .to_str()
        .unwrap()
        .to_string()
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Splits a Table print into its header and rows, as words.
fn table(text: &str) -> (Vec<&str>, Vec<Vec<&str>>) {
    let mut lines = text.lines();
    let header = words(lines.next().expect("a header line"));
    (header, lines.map(words).collect())
}

/// A kubectl AGE cell: a few digits and a unit, e.g. `0s` or `12s`.
fn assert_age(cell: &str) {
    let digits = cell.trim_end_matches(['s', 'm']);
    assert!(
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits != cell,
        "not an age: {cell:?}"
    );
}

/// Polls `check` every 50 ms until it holds, up to [`BOUND`].
fn poll(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A long-running kubectl (a watch) whose stdout a thread turns into items; killed on drop.
struct Watcher<T> {
    child: Child,
    items: mpsc::Receiver<T>,
    args: Vec<String>,
}

impl<T: Send + 'static> Watcher<T> {
    fn spawn(
        server: &ApiServer,
        args: &[&str],
        read: impl FnOnce(Box<dyn Read + Send>, mpsc::Sender<T>) + Send + 'static,
    ) -> Watcher<T> {
        let log = std::fs::File::create(server.dir.path().join("watch.stderr")).unwrap();
        let mut child = Command::new(support::kubectl())
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .arg("--cache-dir")
            .arg(server.dir.path().join("kubectl-cache"))
            .args(args)
            .env("HOME", server.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("run kubectl");
        let out = child.stdout.take().unwrap();
        let (tx, items) = mpsc::channel();
        std::thread::spawn(move || read(Box::new(out), tx));
        Watcher {
            child,
            items,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The next item, within [`BOUND`].
    fn next(&self, what: &str) -> T {
        self.items
            .recv_timeout(BOUND)
            .unwrap_or_else(|e| panic!("kubectl {:?}: no {what} ({e})", self.args))
    }
}

impl Watcher<String> {
    /// Every line kubectl prints.
    fn lines(server: &ApiServer, args: &[&str]) -> Watcher<String> {
        Watcher::spawn(server, args, |out, tx| {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        })
    }
}

impl Watcher<Value> {
    /// Every JSON document kubectl prints (`-o json` prints them back to back).
    fn json(server: &ApiServer, args: &[&str]) -> Watcher<Value> {
        Watcher::spawn(server, args, |out, tx| {
            for value in serde_json::Deserializer::from_reader(out).into_iter::<Value>() {
                let Ok(value) = value else { return };
                if tx.send(value).is_err() {
                    return;
                }
            }
        })
    }
}

impl<T> Drop for Watcher<T> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .expect("a resourceVersion")
        .parse()
        .expect("a numeric resourceVersion")
}

// ---------------------------------------------------------------------------------------------

fn version_and_readyz_report_the_server(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let text = ok(&server, &["version"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("Client Version: v1.37.2"), "{text}");
    assert!(
        lines.contains(&"Server Version: v1.37.2+svcplane"),
        "{text}"
    );
    let both: Value = serde_json::from_str(&ok(&server, &["version", "-o", "json"])).unwrap();
    assert_eq!(both["serverVersion"]["major"], "1");
    assert_eq!(both["serverVersion"]["minor"], "37");
    assert_eq!(both["serverVersion"]["gitVersion"], "v1.37.2+svcplane");
    assert_eq!(both["clientVersion"]["major"], "1");
    let raw: Value = serde_json::from_str(&ok(&server, &["get", "--raw", "/version"])).unwrap();
    assert_eq!(raw["major"], "1");
    assert_eq!(raw["minor"], "37");
    assert_eq!(raw["gitVersion"], "v1.37.2+svcplane");
    assert_eq!(raw["platform"], both["serverVersion"]["platform"]);
    assert_eq!(ok(&server, &["get", "--raw", "/readyz"]), "ok");
}

fn a_cold_cache_lists_services_and_api_resources_shows_each_scope(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    // Created over plain HTTP so that kubectl's first request finds an empty cache.
    let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "foo"},
        "spec": {"ports": [{"port": 80}]}})
    .to_string();
    let (code, answer) = support::http(
        server.port,
        "POST",
        "/api/v1/namespaces/default/services",
        &[("Content-Type", "application/json")],
        Some(&body),
    )
    .unwrap();
    assert_eq!(code, 201, "{answer}");
    let cache = server.dir.path().join("kubectl-cache");
    assert!(!cache.exists(), "the discovery cache starts cold");
    let out = server.kubectl(&["get", "svc", "-A"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    let (header, rows) = table(&text);
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0][..3], ["default", "foo", "ClusterIP"]);
    assert_eq!(rows[0][4..6], ["<none>", "80/TCP"]);
    assert_age(rows[0][6]);
    let discovery = cache
        .join("discovery")
        .join(format!("127.0.0.1_{}", server.port));
    for group in [
        "v1",
        "discovery.k8s.io/v1",
        "coordination.k8s.io/v1",
        "events.k8s.io/v1",
    ] {
        assert!(
            discovery.join(group).join("serverresources.json").is_file(),
            "kubectl cached the resources of {group}"
        );
    }

    let text = ok(&server, &["api-resources"]);
    let (header, rows) = table(&text);
    assert_eq!(
        header,
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    let expected: &[&[&str]] = &[
        &["namespaces", "ns", "v1", "false", "Namespace"],
        &["services", "svc", "v1", "true", "Service"],
        &["endpoints", "ep", "v1", "true", "Endpoints"],
        &["pods", "po", "v1", "true", "Pod"],
        &["nodes", "no", "v1", "false", "Node"],
        &["events", "ev", "v1", "true", "Event"],
        &["events", "ev", "events.k8s.io/v1", "true", "Event"],
        &[
            "endpointslices",
            "discovery.k8s.io/v1",
            "true",
            "EndpointSlice",
        ],
        &["leases", "coordination.k8s.io/v1", "true", "Lease"],
    ];
    for row in expected {
        assert!(
            rows.iter().any(|r| r == row),
            "api-resources has no row {row:?}:\n{text}"
        );
    }
    assert_eq!(rows.len(), expected.len(), "{text}");
}

fn create_with_default_validation_succeeds_once_then_already_exists(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    let out = server.kubectl(&["create", "-f", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "service/foo created\n");
    assert_eq!(stderr(&out), "");
    let audit = server.audit();
    let creates: Vec<&Value> = audit
        .iter()
        .filter(|a| a["verb"] == "create" && a["resource"] == "services")
        .collect();
    assert_eq!(creates.len(), 1, "{audit:#?}");
    assert_eq!(creates[0]["code"], 201);
    assert_eq!(creates[0]["namespace"], "default");
    assert!(
        creates[0]["userAgent"]
            .as_str()
            .unwrap()
            .starts_with("kubectl/v1.37.2"),
        "{:?}",
        creates[0]
    );

    let again = fails(&server, &["create", "-f", &path]);
    assert_eq!(
        again,
        format!(
            "Error from server (AlreadyExists): error when creating \"{path}\": services \"foo\" already exists\n"
        )
    );
    assert_eq!(names(&server, &["svc"]), ["service/foo"]);
}

fn get_yaml_shows_server_set_metadata_and_service_defaults(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    ok(&server, &["create", "-f", &path]);
    let text = ok(&server, &["get", "svc", "foo", "-o", "yaml"]);
    let yaml: Value = serde_yaml::from_str(&text).expect("kubectl prints YAML");
    let meta = &yaml["metadata"];
    assert_eq!(yaml["apiVersion"], "v1");
    assert_eq!(yaml["kind"], "Service");
    assert_eq!(meta["name"], "foo");
    assert_eq!(meta["namespace"], "default");
    let uid = meta["uid"].as_str().expect("a uid");
    assert!(uuid_like(uid), "uid {uid:?}");
    let created = meta["creationTimestamp"]
        .as_str()
        .expect("a creationTimestamp");
    // RFC 3339 in UTC with seconds precision: 2026-01-02T03:04:05Z.
    let shape: String = created
        .chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect();
    assert_eq!(shape, "0000-00-00T00:00:00Z", "creationTimestamp {created}");
    assert!(rv(&yaml) > 0);
    assert_eq!(yaml["spec"]["type"], "ClusterIP");
    assert_eq!(yaml["spec"]["sessionAffinity"], "None");
    assert_eq!(
        yaml["spec"]["ports"],
        json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}])
    );
    // Without targetPort, it defaults to the port.
    let bare = file(
        &server,
        "bare.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bare\nspec:\n  ports:\n  - port: 53\n    protocol: UDP\n",
    );
    ok(&server, &["create", "-f", &bare]);
    let text = ok(&server, &["get", "svc", "bare", "-o", "yaml"]);
    let yaml: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        yaml["spec"]["ports"],
        json!([{"port": 53, "protocol": "UDP", "targetPort": 53}])
    );
    assert_eq!(yaml["spec"]["type"], "ClusterIP");
    assert_eq!(yaml["spec"]["sessionAffinity"], "None");
    assert_ne!(yaml["metadata"]["uid"], uid, "every object has its own uid");
}

fn uuid_like(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn tables_print_the_upstream_columns_for_services_pods_and_slices(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    ok(&server, &["create", "-f", &path]);
    let text = ok(&server, &["get", "svc"]);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)   AGE"
    );
    let row = words(lines.next().expect("a row for foo"));
    assert_eq!(row.len(), 6, "{text}");
    // CLUSTER-IP (row[2]) is whatever admission allocated; none runs here.
    assert_eq!(row[..2], ["foo", "ClusterIP"]);
    assert_eq!(row[3..5], ["<none>", "80/TCP"]);
    assert_age(row[5]);
    assert_eq!(lines.next(), None, "{text}");

    // A LoadBalancer shows its ingress IP; -o wide adds SELECTOR.
    let lb = file(
        &server,
        "lb.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\nspec:\n  type: LoadBalancer\n  selector:\n    app: lb\n  ports:\n  - name: https\n    port: 443\n    protocol: TCP\n  - name: dns\n    port: 53\n    protocol: UDP\n",
    );
    ok(&server, &["create", "-f", &lb]);
    ok(
        &server,
        &[
            "patch",
            "svc",
            "lb",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"1.2.3.4"}]}}}"#,
        ],
    );
    let text = ok(&server, &["get", "svc", "lb", "-o", "wide"]);
    let (header, rows) = table(&text);
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0][..2], ["lb", "LoadBalancer"]);
    assert_eq!(rows[0][3..5], ["1.2.3.4", "443/TCP,53/UDP"]);
    assert_age(rows[0][5]);
    assert_eq!(rows[0][6], "app=lb");

    // Pods: one pending, one running on a node with one of two containers ready.
    let pods = file(
        &server,
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pending\nspec:\n  containers:\n  - name: app\n    image: nginx\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: running\nspec:\n  nodeName: node-1\n  containers:\n  - name: app\n    image: nginx\n  - name: sidecar\n    image: busybox\n",
    );
    assert_eq!(
        ok(&server, &["create", "-f", &pods]),
        "pod/pending created\npod/running created\n"
    );
    let status = json!({"status": {
        "phase": "Running",
        "podIP": "10.1.0.5",
        "podIPs": [{"ip": "10.1.0.5"}],
        "containerStatuses": [
            {"name": "app", "image": "nginx", "imageID": "", "ready": true, "restartCount": 2,
             "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
            {"name": "sidecar", "image": "busybox", "imageID": "", "ready": false, "restartCount": 1,
             "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
        ],
    }})
    .to_string();
    ok(
        &server,
        &[
            "patch",
            "pod",
            "running",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    );
    let text = ok(&server, &["get", "pods", "-o", "wide"]);
    let (header, rows) = table(&text);
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(rows[0][..4], ["pending", "0/1", "Pending", "0"]);
    assert_age(rows[0][4]);
    assert_eq!(rows[0][5..], ["<none>", "<none>", "<none>", "<none>"]);
    assert_eq!(rows[1][..4], ["running", "1/2", "Running", "3"]);
    assert_age(rows[1][4]);
    assert_eq!(rows[1][5..], ["10.1.0.5", "node-1", "<none>", "<none>"]);
    let plain = ok(&server, &["get", "pods"]);
    let (header, _) = table(&plain);
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);

    // EndpointSlices: ports and the first three addresses.
    let slices = file(
        &server,
        "slices.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: foo-abc\n  labels:\n    kubernetes.io/service-name: foo\naddressType: IPv4\nendpoints:\n- addresses: [10.1.0.1]\n- addresses: [10.1.0.2]\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n- name: dns\n  port: 53\n  protocol: UDP\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: foo-def\naddressType: IPv4\nendpoints:\n- addresses: [10.2.0.1]\n- addresses: [10.2.0.2]\n- addresses: [10.2.0.3]\n- addresses: [10.2.0.4]\n- addresses: [10.2.0.5]\nports:\n- port: 80\n",
    );
    ok(&server, &["create", "-f", &slices]);
    let text = ok(&server, &["get", "endpointslices"]);
    let (header, rows) = table(&text);
    assert_eq!(header, ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]);
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(
        rows[0][..4],
        ["foo-abc", "IPv4", "8080,53", "10.1.0.1,10.1.0.2"]
    );
    assert_age(rows[0][4]);
    assert_eq!(
        rows[1][..7],
        [
            "foo-def",
            "IPv4",
            "80",
            "10.2.0.1,10.2.0.2,10.2.0.3",
            "+",
            "2",
            "more..."
        ]
    );
    assert_age(rows[1][7]);
}

fn apply_replaces_a_changed_port_and_merges_containers_by_name(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    assert_eq!(
        ok(&server, &["apply", "-f", &path]),
        "service/foo created\n"
    );
    let first = get_json(&server, &["svc", "foo"]);
    let last_applied = |object: &Value| -> Value {
        serde_json::from_str(
            object["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                .as_str()
                .expect("a last-applied annotation"),
        )
        .unwrap()
    };
    assert_eq!(
        last_applied(&first)["spec"]["ports"],
        json!([{"port": 80, "targetPort": 8080}])
    );
    write(
        server.dir.path(),
        "svc.yaml",
        &SVC.replace("- port: 80\n", "- port: 81\n"),
    );
    assert_eq!(
        ok(&server, &["apply", "-f", &path]),
        "service/foo configured\n"
    );
    let second = get_json(&server, &["svc", "foo"]);
    assert_eq!(
        second["spec"]["ports"],
        json!([{"port": 81, "protocol": "TCP", "targetPort": 8080}])
    );
    assert_eq!(
        last_applied(&second)["spec"]["ports"],
        json!([{"port": 81, "targetPort": 8080}])
    );
    assert_eq!(second["metadata"]["uid"], first["metadata"]["uid"]);
    assert!(rv(&second) > rv(&first));
    assert_eq!(
        ok(&server, &["apply", "-f", &path]),
        "service/foo unchanged\n"
    );

    // A Pod: an env var added to one container, while a container the manifest does not know
    // (added by someone else) must survive.
    let pod = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: nginx
    env:
    - name: A
      value: \"1\"
  - name: sidecar
    image: busybox
";
    let pod_path = file(&server, "pod.yaml", pod);
    assert_eq!(
        ok(&server, &["apply", "-f", &pod_path]),
        "pod/web created\n"
    );
    assert_eq!(
        ok(
            &server,
            &[
                "patch",
                "pod",
                "web",
                "-p",
                r#"{"spec":{"containers":[{"name":"injected","image":"envoy"}]}}"#,
            ],
        ),
        "pod/web patched\n"
    );
    write(
        server.dir.path(),
        "pod.yaml",
        &pod.replace(
            "      value: \"1\"\n",
            "      value: \"1\"\n    - name: B\n      value: \"2\"\n",
        ),
    );
    assert_eq!(
        ok(&server, &["apply", "-f", &pod_path]),
        "pod/web configured\n"
    );
    let web = get_json(&server, &["pod", "web"]);
    let containers = web["spec"]["containers"].as_array().unwrap();
    let by_name = |name: &str| {
        containers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("container {name} is gone: {containers:#?}"))
    };
    assert_eq!(containers.len(), 3, "{containers:#?}");
    assert_eq!(
        by_name("app")["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
    assert_eq!(by_name("app")["image"], "nginx");
    assert_eq!(
        by_name("sidecar"),
        &json!({"name": "sidecar", "image": "busybox"})
    );
    assert_eq!(
        by_name("injected"),
        &json!({"name": "injected", "image": "envoy"})
    );
    assert_eq!(
        last_applied(&web)["spec"]["containers"][0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
}

fn label_and_annotate_add_and_remove_metadata(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    ok(&server, &["create", "-f", &path]);
    assert_eq!(
        ok(&server, &["label", "svc", "foo", "a=b"]),
        "service/foo labeled\n"
    );
    assert_eq!(
        ok(&server, &["annotate", "svc", "foo", "x=y"]),
        "service/foo annotated\n"
    );
    let both = get_json(&server, &["svc", "foo"]);
    assert_eq!(both["metadata"]["labels"], json!({"app": "foo", "a": "b"}));
    assert_eq!(both["metadata"]["annotations"], json!({"x": "y"}));
    assert_eq!(
        ok(&server, &["label", "svc", "foo", "a-"]),
        "service/foo unlabeled\n"
    );
    let after = get_json(&server, &["svc", "foo"]);
    assert_eq!(after["metadata"]["labels"], json!({"app": "foo"}));
    assert_eq!(after["metadata"]["annotations"], json!({"x": "y"}));
    assert!(rv(&after) > rv(&both));
    assert_eq!(after["spec"], both["spec"]);
    // Selecting by the labels that are left.
    assert_eq!(names(&server, &["svc", "-l", "app=foo"]), ["service/foo"]);
    assert!(names(&server, &["svc", "-l", "a=b"]).is_empty());
    // Overwriting needs --overwrite, as upstream.
    let err = fails(&server, &["annotate", "svc", "foo", "x=z"]);
    assert_eq!(
        err,
        "error: --overwrite is false but found the following declared annotation(s): 'x' already has a value (y)\n"
    );
}

fn a_status_patch_changes_only_status(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    ok(&server, &["create", "-f", &path]);
    let before = get_json(&server, &["svc", "foo"]);
    assert_eq!(before["status"], json!({"loadBalancer": {}}));
    assert_eq!(
        ok(
            &server,
            &[
                "patch",
                "svc",
                "foo",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"loadBalancer":{"ingress":[{"ip":"1.2.3.4"}]}}}"#,
            ],
        ),
        "service/foo patched\n"
    );
    let after = get_json(&server, &["svc", "foo"]);
    assert_eq!(
        after["status"],
        json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})
    );
    assert_eq!(after["spec"], before["spec"]);
    assert!(rv(&after) > rv(&before));
    let mut meta = after["metadata"].clone();
    meta["resourceVersion"] = before["metadata"]["resourceVersion"].clone();
    assert_eq!(meta, before["metadata"], "only the resourceVersion changed");
    // A status subresource patch may not touch the spec ...
    ok(
        &server,
        &[
            "patch",
            "svc",
            "foo",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
        ],
    );
    assert_eq!(get_json(&server, &["svc", "foo"])["spec"], before["spec"]);
    // ... and a main-resource patch may not touch the status.
    assert_eq!(
        ok(
            &server,
            &[
                "patch",
                "svc",
                "foo",
                "--type=merge",
                "-p",
                r#"{"status":{"loadBalancer":{"ingress":[{"ip":"9.9.9.9"}]}}}"#,
            ],
        ),
        "service/foo patched (no change)\n"
    );
    let last = get_json(&server, &["svc", "foo"]);
    assert_eq!(last["status"], after["status"]);
    assert_eq!(rv(&last), rv(&after));
    // Nor may a main-resource PUT: `replace` with a new status and a new label keeps the label
    // only.
    let mut edited = last.clone();
    edited["status"] = json!({"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}]}});
    edited["metadata"]["labels"]["edited"] = json!("yes");
    let edited_path = file(&server, "edited.json", &edited.to_string());
    assert_eq!(
        ok(&server, &["replace", "-f", &edited_path]),
        "service/foo replaced\n"
    );
    let replaced = get_json(&server, &["svc", "foo"]);
    assert_eq!(replaced["metadata"]["labels"]["edited"], "yes");
    assert_eq!(replaced["status"], after["status"]);
    assert_eq!(replaced["spec"], before["spec"]);
}

fn replace_with_a_stale_resource_version_conflicts(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    ok(&server, &["create", "-f", &path]);
    let stale = ok(&server, &["get", "svc", "foo", "-o", "json"]);
    let stale_path = file(&server, "stale.json", &stale);
    ok(&server, &["label", "svc", "foo", "changed=yes"]);
    let current = get_json(&server, &["svc", "foo"]);
    let err = fails(&server, &["replace", "-f", &stale_path]);
    assert_eq!(
        err,
        format!(
            "Error from server (Conflict): error when replacing \"{stale_path}\": Operation cannot be fulfilled on services \"foo\": the object has been modified; please apply your changes to the latest version and try again\n"
        )
    );
    assert_eq!(
        get_json(&server, &["svc", "foo"]),
        current,
        "nothing was written"
    );
    // With the current resourceVersion the same replace goes through.
    let mut fresh: Value = serde_json::from_str(&stale).unwrap();
    fresh["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    let fresh_path = file(&server, "fresh.json", &fresh.to_string());
    assert_eq!(
        ok(&server, &["replace", "-f", &fresh_path]),
        "service/foo replaced\n"
    );
    let replaced = get_json(&server, &["svc", "foo"]);
    assert_eq!(replaced["metadata"]["labels"], json!({"app": "foo"}));
    assert!(rv(&replaced) > rv(&current));
}

fn server_side_apply_is_refused_cleanly(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    ok(&server, &["create", "-f", &path]);
    let before = get_json(&server, &["svc", "foo"]);
    write(
        server.dir.path(),
        "svc.yaml",
        &SVC.replace("- port: 80\n", "- port: 81\n"),
    );
    let err = fails(&server, &["apply", "--server-side", "-f", &path]);
    assert_eq!(
        err,
        "error: Server-side apply not available on the server: (the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json)\n"
    );
    assert_eq!(
        get_json(&server, &["svc", "foo"]),
        before,
        "nothing changed"
    );
    // Nor does it create.
    let other = file(
        &server,
        "other.yaml",
        &SVC.replace("name: foo", "name: other"),
    );
    let err = fails(&server, &["apply", "--server-side", "-f", &other]);
    assert!(
        err.starts_with("error: Server-side apply not available on the server: "),
        "{err}"
    );
    assert_eq!(names(&server, &["svc"]), ["service/foo"]);
}

fn delete_removes_the_service(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    ok(&server, &["create", "-f", &path]);
    let started = Instant::now();
    assert_eq!(
        ok(&server, &["delete", "svc", "foo"]),
        "service \"foo\" deleted from default namespace\n"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "delete took {:?}",
        started.elapsed()
    );
    let err = fails(&server, &["get", "svc", "foo"]);
    assert_eq!(
        err,
        "Error from server (NotFound): services \"foo\" not found\n"
    );
    let err = fails(&server, &["delete", "svc", "foo"]);
    assert_eq!(
        err,
        "Error from server (NotFound): services \"foo\" not found\n"
    );
    assert!(names(&server, &["svc"]).is_empty());
}

fn watches_print_existing_rows_then_changes(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    ok(&server, &["create", "-f", &path]);

    let table = Watcher::lines(&server, &["get", "svc", "-w"]);
    assert_eq!(
        words(&table.next("the header")),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let existing = table.next("the existing row");
    assert_eq!(words(&existing)[..2], ["foo", "ClusterIP"], "{existing}");
    assert_eq!(words(&existing)[3..5], ["<none>", "80/TCP"], "{existing}");

    let object = Watcher::json(&server, &["get", "svc", "foo", "-w", "-o", "json"]);
    let current = object.next("the current object");
    assert_eq!(current["metadata"]["name"], "foo");
    assert_eq!(current["metadata"]["labels"], json!({"app": "foo"}));
    // kubectl drops the first event of a single-object watch (the RV=0 replay of the object it
    // printed), so a change must wait until that watch is open; the server audits a watch once
    // it is subscribed.
    poll("both watches to be open", || {
        server
            .audit()
            .iter()
            .filter(|a| a["verb"] == "watch" && a["resource"] == "services")
            .count()
            == 2
    });

    let bar = file(&server, "bar.yaml", &SVC.replace("name: foo", "name: bar"));
    ok(&server, &["create", "-f", &bar]);
    let started = Instant::now();
    let row = table.next("a row for the new service");
    let row = words(&row);
    assert_eq!(row[..2], ["bar", "ClusterIP"], "{row:?}");
    assert_eq!(row[3..5], ["<none>", "80/TCP"], "{row:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the row came after {:?}",
        started.elapsed()
    );

    ok(&server, &["label", "svc", "foo", "z=1"]);
    // The next object is foo's update: bar's create, before it, did not pass the name selector.
    let updated = object.next("the updated object");
    assert_eq!(updated["metadata"]["name"], "foo");
    assert_eq!(
        updated["metadata"]["labels"],
        json!({"app": "foo", "z": "1"})
    );
    assert!(rv(&updated) > rv(&current));
    assert_eq!(updated["metadata"]["uid"], current["metadata"]["uid"]);
    // The table watch prints the label change as another row for foo.
    let again = table.next("a row for the relabelled service");
    assert_eq!(words(&again)[0], "foo", "{again}");
    drop(table);
    drop(object);
}

fn namespaces_gate_creates_and_take_their_services_on_delete(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let path = file(&server, "svc.yaml", SVC);
    let err = fails(&server, &["create", "-n", "nope", "-f", &path]);
    assert_eq!(
        err,
        format!(
            "Error from server (NotFound): error when creating \"{path}\": namespaces \"nope\" not found\n"
        )
    );
    // A manifest goes as JSON (`kubectl create namespace` sends protobuf: see
    // `create_namespace_and_create_service_send_protobuf_that_is_read`).
    let ns = file(
        &server,
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n",
    );
    assert_eq!(ok(&server, &["create", "-f", &ns]), "namespace/x created\n");
    let created = get_json(&server, &["ns", "x"]);
    assert_eq!(created["status"]["phase"], "Active");
    assert_eq!(
        created["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "x"
    );
    assert_eq!(
        ok(&server, &["create", "-n", "x", "-f", &path]),
        "service/foo created\n"
    );
    ok(&server, &["create", "-f", &path]);
    assert_eq!(names(&server, &["svc", "-n", "x"]), ["service/foo"]);

    assert_eq!(
        ok(&server, &["delete", "ns", "x"]),
        "namespace \"x\" deleted\n"
    );
    poll("namespace x to go", || {
        let out = server.kubectl(&["get", "ns", "x"]);
        if out.status.success() {
            return false;
        }
        assert_eq!(
            assert_failed(&["get", "ns", "x"], &out),
            "Error from server (NotFound): namespaces \"x\" not found\n"
        );
        true
    });
    assert!(names(&server, &["svc", "-n", "x"]).is_empty());
    let everywhere = ok(
        &server,
        &[
            "get",
            "svc",
            "-A",
            "-o",
            "custom-columns=NS:.metadata.namespace,NAME:.metadata.name",
            "--no-headers",
        ],
    );
    assert_eq!(words(&everywhere), ["default", "foo"]);
    // The namespace's name is free again and starts empty.
    assert_eq!(ok(&server, &["create", "-f", &ns]), "namespace/x created\n");
    assert!(names(&server, &["svc", "-n", "x"]).is_empty());
}

/// kubectl's imperative generators send their objects as Kubernetes protobuf.
fn create_namespace_and_create_service_send_protobuf_that_is_read(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    assert_eq!(
        ok(&server, &["create", "namespace", "foo"]),
        "namespace/foo created\n"
    );
    let ns = get_json(&server, &["ns", "foo"]);
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "foo"})
    );
    assert_eq!(ns["spec"], json!({"finalizers": ["kubernetes"]}));
    assert_eq!(ns["status"], json!({"phase": "Active"}));

    assert_eq!(
        ok(
            &server,
            &["create", "service", "clusterip", "my-cs", "--tcp=5678:8080"]
        ),
        "service/my-cs created\n"
    );
    let cs = get_json(&server, &["svc", "my-cs"]);
    assert_eq!(cs["metadata"]["labels"], json!({"app": "my-cs"}));
    assert_eq!(
        cs["spec"]["ports"],
        json!([{"name": "5678-8080", "protocol": "TCP", "port": 5678, "targetPort": 8080}])
    );
    assert_eq!(cs["spec"]["selector"], json!({"app": "my-cs"}));
    assert_eq!(cs["spec"]["type"], "ClusterIP");

    assert_eq!(
        ok(
            &server,
            &[
                "create",
                "service",
                "nodeport",
                "my-np",
                "--tcp=80:8080",
                "--node-port=30080"
            ]
        ),
        "service/my-np created\n"
    );
    let np = get_json(&server, &["svc", "my-np"]);
    assert_eq!(
        np["spec"]["ports"],
        json!([{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}])
    );
    assert_eq!(np["spec"]["type"], "NodePort");

    assert_eq!(
        ok(
            &server,
            &[
                "create",
                "service",
                "externalname",
                "my-en",
                "--external-name",
                "db.example.com"
            ]
        ),
        "service/my-en created\n"
    );
    let en = get_json(&server, &["svc", "my-en"]);
    assert_eq!(en["spec"]["externalName"], "db.example.com");
    assert_eq!(en["spec"]["type"], "ExternalName");
    assert_eq!(en["spec"].get("ports"), None);

    // A named target port, a LoadBalancer, in the namespace just made.
    assert_eq!(
        ok(
            &server,
            &[
                "create",
                "service",
                "loadbalancer",
                "my-lb",
                "-n",
                "foo",
                "--tcp=53:dns"
            ]
        ),
        "service/my-lb created\n"
    );
    let lb = get_json(&server, &["svc", "my-lb", "-n", "foo"]);
    assert_eq!(
        lb["spec"]["ports"],
        json!([{"name": "53-dns", "protocol": "TCP", "port": 53, "targetPort": "dns"}])
    );
    assert_eq!(lb["spec"]["type"], "LoadBalancer");
    assert_eq!(lb["metadata"]["namespace"], "foo");

    // The generator's object is refused like a manifest's when it is invalid.
    assert_eq!(
        fails(&server, &["create", "namespace", "Bad_Name"]),
        "The Namespace \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')\n"
    );
}

fn invalid_objects_are_refused_and_nothing_is_stored(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let port_zero = file(
        &server,
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 0\n    targetPort: 8080\n",
    );
    let invalid = "The Service \"bad\" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive\n";
    assert_eq!(
        fails(&server, &["create", "--validate=false", "-f", &port_zero]),
        invalid
    );
    assert_eq!(fails(&server, &["create", "-f", &port_zero]), invalid);
    assert!(names(&server, &["svc"]).is_empty());

    // Two errors are listed one a line.
    let two = file(
        &server,
        "two.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 0\n",
    );
    assert_eq!(
        fails(&server, &["create", "--validate=false", "-f", &two]),
        "The Service \"bad\" is invalid: \n\
         * spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive\n\
         * spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive\n"
    );

    let bad_name = file(
        &server,
        "name.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: Bad_Name\nspec:\n  ports:\n  - port: 80\n",
    );
    assert_eq!(
        fails(&server, &["create", "-f", &bad_name]),
        "The Service \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')\n"
    );

    let unknown = file(
        &server,
        "unknown.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  foo: bar\n  ports:\n  - port: 80\n",
    );
    assert_eq!(
        fails(&server, &["create", "-f", &unknown]),
        format!(
            "Error from server (BadRequest): error when creating \"{unknown}\": strict decoding error: unknown field \"spec.foo\"\n"
        )
    );
    assert!(names(&server, &["svc"]).is_empty());

    // A wrongly typed value is a decoding error, whatever the validation.
    let typed = file(
        &server,
        "typed.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: eighty\n",
    );
    let err = fails(&server, &["create", "--validate=false", "-f", &typed]);
    let prefix = format!(
        "Error from server (BadRequest): error when creating \"{typed}\": Service in version \"v1\" cannot be handled as a Service: "
    );
    assert!(
        err.starts_with(&prefix) && err.contains("spec.ports[0].port"),
        "{err}"
    );
    assert!(names(&server, &["svc"]).is_empty());
    let out = server.kubectl(&["get", "svc"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), "No resources found in default namespace.\n");

    // With --validate=false an unknown field is dropped, not stored.
    assert_eq!(
        ok(&server, &["create", "--validate=false", "-f", &unknown]),
        "service/bad created\n"
    );
    let stored = get_json(&server, &["svc", "bad"]);
    assert_eq!(stored["spec"].get("foo"), None);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(super::Backend::Memory) })*
        }
        mod etcd {
            $(#[test] fn $name() { super::$name(super::Backend::Etcd) })*
        }
    };
}

on_both_backends!(
    version_and_readyz_report_the_server,
    a_cold_cache_lists_services_and_api_resources_shows_each_scope,
    create_with_default_validation_succeeds_once_then_already_exists,
    get_yaml_shows_server_set_metadata_and_service_defaults,
    tables_print_the_upstream_columns_for_services_pods_and_slices,
    apply_replaces_a_changed_port_and_merges_containers_by_name,
    label_and_annotate_add_and_remove_metadata,
    a_status_patch_changes_only_status,
    replace_with_a_stale_resource_version_conflicts,
    server_side_apply_is_refused_cleanly,
    delete_removes_the_service,
    watches_print_existing_rows_then_changes,
    namespaces_gate_creates_and_take_their_services_on_delete,
    create_namespace_and_create_service_send_protobuf_that_is_read,
    invalid_objects_are_refused_and_nothing_is_stored,
);
