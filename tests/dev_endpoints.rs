//! Checks 25–47 of spec part E through kubectl against `svcplane dev`: the Endpoints and
//! EndpointSlices its controllers keep for Services and pods, as `kubectl get` shows them;
//! and what the seeds show of them — `kubectl get endpoints`, `kubectl describe svc`, slices
//! going with their Service by garbage collection, and the cluster's own Services in DNS.
//! One dual-stack `svcplane dev` (three nodes in three zones) serves the whole binary; each
//! test works in its own namespace.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Dev;

const FLAGS: &[&str] = &[
    "--service-cluster-ip-range",
    "10.96.0.0/12,fd00:10:96::/108",
    "--pod-cidr",
    "10.244.0.0/16,fd00:10:244::/56",
    "--nodes",
    "3",
    "--max-pod-grace",
    "60s",
];

/// The bound of every wait for the controllers.
const PATIENCE: Duration = Duration::from_secs(90);

fn dev() -> &'static Dev {
    Dev::shared(FLAGS)
}

/// kubectl; panics with its stderr when it fails.
fn kubectl(args: &[&str]) -> String {
    let out = dev().kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        support::stderr(&out)
    );
    support::stdout(&out)
}

/// A fresh namespace for one test.
fn namespace(name: &str) -> String {
    kubectl(&["create", "namespace", name]);
    name.to_string()
}

/// The objects as one multi-document YAML stream (each document JSON), as a file of
/// manifests would give them.
fn documents(objects: &[Value]) -> String {
    objects
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// `kubectl apply` of these objects in `ns`.
fn apply(ns: &str, objects: &[Value]) {
    let out = dev().kubectl_stdin(&["-n", ns, "apply", "-f", "-"], Some(&documents(objects)));
    assert!(out.status.success(), "apply: {}", support::stderr(&out));
}

/// `kubectl create` of these objects in `ns` (faster than apply for many).
fn create(ns: &str, objects: &[Value]) {
    let out = dev().kubectl_stdin(&["-n", ns, "create", "-f", "-"], Some(&documents(objects)));
    assert!(out.status.success(), "create: {}", support::stderr(&out));
}

/// `kubectl get … -o json` in `ns`; None when not found.
fn get(ns: &str, what: &[&str]) -> Option<Value> {
    let mut args = vec!["-n", ns, "get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    let out = dev().kubectl(&args);
    if !out.status.success() {
        let err = support::stderr(&out);
        assert!(err.contains("NotFound"), "kubectl {args:?}: {err}");
        return None;
    }
    Some(serde_json::from_str(&support::stdout(&out)).unwrap())
}

fn endpoints(ns: &str, svc: &str) -> Option<Value> {
    get(ns, &["endpoints", svc])
}

/// The EndpointSlices of a Service, by the service-name label.
fn slices(ns: &str, svc: &str) -> Vec<Value> {
    let selector = format!("kubernetes.io/service-name={svc}");
    get(ns, &["endpointslices", "-l", &selector]).unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// Polls `probe` until it gives a value.
async fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > deadline {
            let log = dev().log();
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
            let tail = warnings[warnings.len().saturating_sub(40)..].join("\n");
            panic!("timed out waiting for {what}; svcplane dev's last warnings:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

/// A pod labelled `app`, with container ports `(name, port)`, merged with `extra`.
fn pod(name: &str, app: &str, ports: &[(&str, i32)], extra: Value) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "containerPort": p}))
        .collect();
    let mut body = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "ports": ports}]},
    });
    json_patch::merge(&mut body, &extra);
    body
}

/// A pod held unready by the simulated kubelet.
fn unready() -> Value {
    json!({"metadata": {"annotations": {"svcplane.io/ready": "false"}}})
}

/// The pod's IPs, once it has them.
fn pod_ips(ns: &str, name: &str) -> Option<Vec<String>> {
    let pod = get(ns, &["pod", name])?;
    let ips: Vec<String> = pod["status"]["podIPs"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["ip"].as_str().map(str::to_string))
        .collect();
    (!ips.is_empty()).then_some(ips)
}

fn ipv4_of(ips: &[String]) -> String {
    ips.iter().find(|ip| !ip.contains(':')).unwrap().clone()
}

fn ipv6_of(ips: &[String]) -> String {
    ips.iter().find(|ip| ip.contains(':')).unwrap().clone()
}

/// The IPs of a subset's `addresses` or `notReadyAddresses`.
fn ips_of(subset: &Value, field: &str) -> BTreeSet<String> {
    subset[field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect()
}

fn all_slice_endpoints(slices: &[Value]) -> Vec<Value> {
    slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn subsets(ep: &Value) -> Vec<Value> {
    ep["subsets"].as_array().cloned().unwrap_or_default()
}

fn conditions(endpoint: &Value) -> (bool, bool, bool) {
    let c = &endpoint["conditions"];
    (
        c["ready"].as_bool().unwrap_or(false),
        c["serving"].as_bool().unwrap_or(false),
        c["terminating"].as_bool().unwrap_or(false),
    )
}

fn resource_versions(slices: &[Value]) -> BTreeMap<String, String> {
    slices
        .iter()
        .map(|s| {
            (
                s["metadata"]["name"].as_str().unwrap().to_string(),
                s["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

fn endpoint_count(slice: &Value) -> usize {
    slice["endpoints"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn check_25_three_ready_pods_give_one_subset_and_one_ipv4_slice_of_three() {
    let ns = namespace("check-25");
    let mut objects = vec![service(
        "web",
        json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
    )];
    for i in 0..3 {
        objects.push(pod(
            &format!("web-{i}"),
            "web",
            &[("http", 8080)],
            json!({}),
        ));
    }
    apply(&ns, &objects);
    let ep = until("three addresses", || {
        let ep = endpoints(&ns, "web")?;
        let s = subsets(&ep);
        (s.len() == 1 && ips_of(&s[0], "addresses").len() == 3).then_some(ep)
    })
    .await;
    let subset = &subsets(&ep)[0];
    assert_eq!(
        subset["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );
    let mut pod_v4 = BTreeSet::new();
    for i in 0..3 {
        pod_v4.insert(ipv4_of(&pod_ips(&ns, &format!("web-{i}")).unwrap()));
    }
    assert_eq!(ips_of(subset, "addresses"), pod_v4);
    let slices = until("one slice of three", || {
        let s = slices(&ns, "web");
        (s.len() == 1 && endpoint_count(&s[0]) == 3).then_some(s)
    })
    .await;
    assert_eq!(slices[0]["addressType"], "IPv4");
    for endpoint in all_slice_endpoints(&slices) {
        assert_eq!(conditions(&endpoint), (true, true, false), "{endpoint}");
    }
}

#[tokio::test]
async fn check_26_an_unready_pod_is_a_not_ready_address_and_a_not_ready_not_serving_endpoint() {
    let ns = namespace("check-26");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
            pod("web-0", "web", &[], unready()),
        ],
    );
    let ep = until("a not-ready address", || {
        let ep = endpoints(&ns, "web")?;
        let s = subsets(&ep);
        (s.len() == 1 && ips_of(&s[0], "notReadyAddresses").len() == 1).then_some(ep)
    })
    .await;
    assert!(ips_of(&subsets(&ep)[0], "addresses").is_empty());
    let slices = until("one endpoint", || {
        let s = slices(&ns, "web");
        (endpoint_count(s.first()?) == 1).then_some(s)
    })
    .await;
    assert_eq!(
        conditions(&all_slice_endpoints(&slices)[0]),
        (false, false, false)
    );
}

#[tokio::test]
async fn check_27_publish_not_ready_addresses_lists_unready_pods_as_ready_but_not_serving() {
    let ns = namespace("check-27");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}], "publishNotReadyAddresses": true}),
            ),
            pod("web-0", "web", &[], unready()),
        ],
    );
    until("a ready address for the unready pod", || {
        let s = subsets(&endpoints(&ns, "web")?);
        (s.len() == 1 && ips_of(&s[0], "addresses").len() == 1).then_some(())
    })
    .await;
    let slices = until("one endpoint", || {
        let s = slices(&ns, "web");
        (endpoint_count(s.first()?) == 1).then_some(s)
    })
    .await;
    assert_eq!(
        conditions(&all_slice_endpoints(&slices)[0]),
        (true, false, false)
    );
}

#[tokio::test]
async fn check_28_a_terminating_ready_pod_leaves_endpoints_and_stays_in_slices_as_terminating() {
    let ns = namespace("check-28");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
            pod("web-0", "web", &[], json!({})),
            pod(
                "web-1",
                "web",
                &[],
                json!({"spec": {"terminationGracePeriodSeconds": 60}}),
            ),
        ],
    );
    until("two addresses", || {
        let s = subsets(&endpoints(&ns, "web")?);
        (s.len() == 1 && ips_of(&s[0], "addresses").len() == 2).then_some(())
    })
    .await;
    let terminating = ipv4_of(&pod_ips(&ns, "web-1").unwrap());
    kubectl(&["-n", &ns, "delete", "pod", "web-1", "--wait=false"]);
    let ep = until("one address", || {
        let ep = endpoints(&ns, "web")?;
        let s = subsets(&ep);
        (s.len() == 1 && ips_of(&s[0], "addresses").len() == 1).then_some(ep)
    })
    .await;
    let subset = &subsets(&ep)[0];
    assert!(!ips_of(subset, "addresses").contains(&terminating));
    assert!(!ips_of(subset, "notReadyAddresses").contains(&terminating));
    let endpoint = until("the terminating endpoint", || {
        all_slice_endpoints(&slices(&ns, "web"))
            .into_iter()
            .find(|e| e["addresses"][0] == terminating.as_str() && conditions(e).2)
    })
    .await;
    assert_eq!(conditions(&endpoint), (false, true, true));
}

#[tokio::test]
async fn check_29_finished_pods_and_pods_without_an_ip_are_in_neither_object() {
    let ns = namespace("check-29");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
            pod("web-0", "web", &[], json!({})),
            pod("done", "web", &[], json!({})),
            // Fits no node: never scheduled, never given an IP.
            pod(
                "pending",
                "web",
                &[],
                json!({"spec": {"nodeSelector": {"example.com/none": "x"}}}),
            ),
        ],
    );
    until("two pods with IPs", || {
        pod_ips(&ns, "web-0")?;
        pod_ips(&ns, "done")
    })
    .await;
    kubectl(&[
        "-n",
        &ns,
        "patch",
        "pod",
        "done",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    let web = ipv4_of(&pod_ips(&ns, "web-0").unwrap());
    until("only web-0 listed", || {
        let s = subsets(&endpoints(&ns, "web")?);
        let all: BTreeSet<String> = s
            .iter()
            .flat_map(|s| {
                let mut ips = ips_of(s, "addresses");
                ips.extend(ips_of(s, "notReadyAddresses"));
                ips
            })
            .collect();
        (all == BTreeSet::from([web.clone()])).then_some(())
    })
    .await;
    until("only web-0 in slices", || {
        let names: Vec<String> = all_slice_endpoints(&slices(&ns, "web"))
            .iter()
            .map(|e| e["targetRef"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        (names == ["web-0"]).then_some(())
    })
    .await;
    assert!(pod_ips(&ns, "pending").is_none());
}

#[tokio::test]
async fn check_30_matching_pods_of_other_namespaces_are_never_included() {
    let ns = namespace("check-30");
    let other = namespace("check-30-other");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
            pod("web-0", "web", &[], json!({})),
        ],
    );
    apply(&other, &[pod("web-0", "web", &[], json!({}))]);
    until("both pods running", || {
        pod_ips(&ns, "web-0")?;
        pod_ips(&other, "web-0")
    })
    .await;
    let ep = until("one address", || {
        let ep = endpoints(&ns, "web")?;
        let s = subsets(&ep);
        (s.len() == 1 && ips_of(&s[0], "addresses").len() == 1).then_some(ep)
    })
    .await;
    let foreign = ipv4_of(&pod_ips(&other, "web-0").unwrap());
    assert!(!ips_of(&subsets(&ep)[0], "addresses").contains(&foreign));
    let slices = slices(&ns, "web");
    for endpoint in all_slice_endpoints(&slices) {
        assert_eq!(endpoint["targetRef"]["namespace"], ns.as_str());
    }
}

#[tokio::test]
async fn check_31_a_hostname_is_kept_only_when_the_subdomain_is_the_service_name() {
    let ns = namespace("check-31");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            pod(
                "web-0",
                "web",
                &[],
                json!({"spec": {"hostname": "web-0", "subdomain": "web"}}),
            ),
            pod(
                "web-1",
                "web",
                &[],
                json!({"spec": {"hostname": "web-1", "subdomain": "elsewhere"}}),
            ),
        ],
    );
    let ep = until("two addresses", || {
        let ep = endpoints(&ns, "web")?;
        let s = subsets(&ep);
        (s.len() == 1 && ips_of(&s[0], "addresses").len() == 2).then_some(ep)
    })
    .await;
    let hostnames: BTreeMap<String, Value> = subsets(&ep)[0]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["targetRef"]["name"].as_str().unwrap().to_string(),
                a["hostname"].clone(),
            )
        })
        .collect();
    assert_eq!(hostnames["web-0"], "web-0");
    assert_eq!(hostnames["web-1"], Value::Null);
    let slices = until("two endpoints", || {
        let s = slices(&ns, "web");
        (all_slice_endpoints(&s).len() == 2).then_some(s)
    })
    .await;
    for endpoint in all_slice_endpoints(&slices) {
        let name = endpoint["targetRef"]["name"].as_str().unwrap();
        let expected = if name == "web-0" {
            json!("web-0")
        } else {
            Value::Null
        };
        assert_eq!(endpoint["hostname"], expected, "{endpoint}");
    }
}

#[tokio::test]
async fn check_32_a_named_target_port_resolves_per_pod_and_a_pod_without_it_misses_only_that_port()
{
    let ns = namespace("check-32");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "admin", "port": 9000, "targetPort": 9000},
                ]}),
            ),
            pod("named", "web", &[("http", 8080)], json!({})),
            pod("unnamed", "web", &[], json!({})),
        ],
    );
    let named = ipv4_of(&until("named's IP", || pod_ips(&ns, "named")).await);
    let unnamed = ipv4_of(&until("unnamed's IP", || pod_ips(&ns, "unnamed")).await);
    let ep = until("two subsets", || {
        let ep = endpoints(&ns, "web")?;
        (subsets(&ep).len() == 2).then_some(ep)
    })
    .await;
    // The pod with the name serves both ports, the other only the numeric one; subsets group
    // ports by the addresses serving them (upstream's RepackSubsets).
    let mut by_ports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for subset in subsets(&ep) {
        let mut ports: Vec<String> = subset["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{}={}", p["name"].as_str().unwrap(), p["port"]))
            .collect();
        ports.sort();
        by_ports.insert(ports.join(","), ips_of(&subset, "addresses"));
    }
    assert_eq!(
        by_ports,
        BTreeMap::from([
            (
                "admin=9000".to_string(),
                BTreeSet::from([named.clone(), unnamed.clone()])
            ),
            ("http=8080".to_string(), BTreeSet::from([named.clone()])),
        ])
    );
    // In slices, one port group per pod: the unnamed pod's slice has only the admin port.
    let slices = until("two slices", || {
        let s = slices(&ns, "web");
        (s.len() == 2 && all_slice_endpoints(&s).len() == 2).then_some(s)
    })
    .await;
    for slice in slices {
        let address = slice["endpoints"][0]["addresses"][0].as_str().unwrap();
        let count = slice["ports"].as_array().unwrap().len();
        assert_eq!(count, if address == named { 2 } else { 1 }, "{slice}");
    }
}

#[tokio::test]
async fn check_33_one_port_name_mapped_to_two_numbers_gives_two_subsets_and_two_slices() {
    let ns = namespace("check-33");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
            ),
            pod("a", "web", &[("http", 8080)], json!({})),
            pod("b", "web", &[("http", 9090)], json!({})),
        ],
    );
    let ep = until("two subsets", || {
        let ep = endpoints(&ns, "web")?;
        (subsets(&ep).len() == 2).then_some(ep)
    })
    .await;
    let ports: BTreeSet<i64> = subsets(&ep)
        .iter()
        .map(|s| s["ports"][0]["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from([8080, 9090]));
    let slices = until("two slices of one each", || {
        let s = slices(&ns, "web");
        (s.len() == 2 && s.iter().all(|s| endpoint_count(s) == 1)).then_some(s)
    })
    .await;
    let slice_ports: BTreeSet<i64> = slices
        .iter()
        .map(|s| {
            assert_eq!(s["ports"].as_array().unwrap().len(), 1);
            s["ports"][0]["port"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(slice_ports, BTreeSet::from([8080, 9090]));
}

#[tokio::test]
async fn check_34_endpoints_hold_at_most_1000_addresses_marked_truncated_until_below_again() {
    let ns = namespace("check-34");
    apply(
        &ns,
        &[service(
            "web",
            json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
        )],
    );
    let pods: Vec<Value> = (0..1500)
        .map(|i| {
            let batch = if i < 600 { "drop" } else { "keep" };
            pod(
                &format!("web-{i}"),
                "web",
                &[],
                json!({"metadata": {"labels": {"batch": batch}}}),
            )
        })
        .collect();
    create(&ns, &pods);
    let ep = until("1000 addresses, truncated", || {
        let ep = endpoints(&ns, "web")?;
        let count: usize = subsets(&ep)
            .iter()
            .map(|s| ips_of(s, "addresses").len())
            .sum();
        let truncated =
            ep["metadata"]["annotations"]["endpoints.kubernetes.io/over-capacity"] == "truncated";
        (count == 1000 && truncated).then_some(ep)
    })
    .await;
    assert!(
        subsets(&ep)
            .iter()
            .all(|s| ips_of(s, "notReadyAddresses").is_empty())
    );
    // The slices hold every pod: the cap is the Endpoints API's alone.
    until("1500 endpoints in slices", || {
        (all_slice_endpoints(&slices(&ns, "web")).len() == 1500).then_some(())
    })
    .await;
    kubectl(&[
        "-n",
        &ns,
        "delete",
        "pods",
        "-l",
        "batch=drop",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    let ep = until("900 addresses", || {
        let ep = endpoints(&ns, "web")?;
        let count: usize = subsets(&ep)
            .iter()
            .map(|s| ips_of(s, "addresses").len())
            .sum();
        (count == 900).then_some(ep)
    })
    .await;
    assert_eq!(
        ep["metadata"]["annotations"]["endpoints.kubernetes.io/over-capacity"],
        Value::Null
    );
}

/// 250 pods behind `web` in `ns`, waited for as three slices of 100, 100 and 50.
async fn two_hundred_and_fifty(ns: &str) -> Vec<Value> {
    // The pods first, all ready, then the Service: its first sync packs all 250 at once. (Pods
    // arriving a few at a time are packed as they come, into other sizes, upstream too.)
    let pods: Vec<Value> = (0..250)
        .map(|i| pod(&format!("web-{i}"), "web", &[], json!({})))
        .collect();
    create(ns, &pods);
    until("250 ready pods", || {
        let list = get(ns, &["pods"])?;
        let ready = list["items"]
            .as_array()?
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        (ready == 250).then_some(())
    })
    .await;
    create(
        ns,
        &[service(
            "web",
            json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
        )],
    );
    until("slices of 100, 100 and 50", || {
        let s = slices(ns, "web");
        let mut sizes: Vec<usize> = s.iter().map(endpoint_count).collect();
        sizes.sort();
        (sizes == [50, 100, 100]).then_some(s)
    })
    .await
}

#[tokio::test]
async fn check_35_a_pod_added_to_250_goes_into_the_slice_of_50_and_nothing_else_is_rewritten() {
    let ns = namespace("check-35");
    let before = two_hundred_and_fifty(&ns).await;
    let versions = resource_versions(&before);
    create(&ns, &[pod("web-250", "web", &[], json!({}))]);
    let after = until("a slice of 51", || {
        let s = slices(&ns, "web");
        s.iter().any(|s| endpoint_count(s) == 51).then_some(s)
    })
    .await;
    let now = resource_versions(&after);
    assert_eq!(now.len(), 3, "no slice was created or deleted");
    let rewritten: Vec<&String> = now
        .iter()
        .filter(|(name, rv)| versions.get(*name) != Some(*rv))
        .map(|(name, _)| name)
        .collect();
    let grown = after
        .iter()
        .find(|s| endpoint_count(s) == 51)
        .unwrap()
        .pointer("/metadata/name")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rewritten, [&grown]);
}

#[tokio::test]
async fn check_36_a_pod_removed_from_a_full_slice_rewrites_only_that_slice() {
    let ns = namespace("check-36");
    let before = two_hundred_and_fifty(&ns).await;
    let versions = resource_versions(&before);
    let full = before.iter().find(|s| endpoint_count(s) == 100).unwrap();
    let victim = full["endpoints"][0]["targetRef"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let full_name = full["metadata"]["name"].as_str().unwrap().to_string();
    kubectl(&[
        "-n",
        &ns,
        "delete",
        "pod",
        &victim,
        "--grace-period=0",
        "--force",
    ]);
    let after = until("the full slice at 99", || {
        let s = slices(&ns, "web");
        s.iter()
            .any(|s| s["metadata"]["name"] == full_name.as_str() && endpoint_count(s) == 99)
            .then_some(s)
    })
    .await;
    let mut sizes: Vec<usize> = after.iter().map(endpoint_count).collect();
    sizes.sort();
    assert_eq!(sizes, [50, 99, 100], "no rebalancing");
    let now = resource_versions(&after);
    let rewritten: Vec<&String> = now
        .iter()
        .filter(|(name, rv)| versions.get(*name) != Some(*rv))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(rewritten, [&full_name]);
}

#[tokio::test]
async fn check_37_a_selector_matching_nothing_gives_empty_endpoints_and_one_placeholder_slice() {
    let ns = namespace("check-37");
    apply(
        &ns,
        &[service(
            "web",
            json!({"selector": {"app": "nothing"}, "ports": [{"port": 80}]}),
        )],
    );
    let ep = until("the Endpoints", || endpoints(&ns, "web")).await;
    assert!(subsets(&ep).is_empty(), "{ep}");
    let slices = until("one slice", || {
        let s = slices(&ns, "web");
        (s.len() == 1).then_some(s)
    })
    .await;
    let placeholder = &slices[0];
    assert_eq!(endpoint_count(placeholder), 0, "{placeholder}");
    assert!(
        placeholder["ports"]
            .as_array()
            .is_none_or(|ports| ports.is_empty()),
        "{placeholder}"
    );
}

#[tokio::test]
async fn check_38_and_39_hand_written_endpoints_of_a_selectorless_service_are_mirrored_until_skipped()
 {
    let ns = namespace("check-38");
    apply(
        &ns,
        &[
            service("db", json!({"ports": [{"port": 5432}]})),
            pod("lookalike", "db", &[], json!({})),
        ],
    );
    // Nothing is written for a selectorless Service by the controllers.
    until("the lookalike pod running", || pod_ips(&ns, "lookalike")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(endpoints(&ns, "db").is_none());
    assert!(slices(&ns, "db").is_empty());
    apply(
        &ns,
        &[json!({
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "db"},
            "subsets": [{"addresses": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.11"}], "ports": [{"port": 5432}]}],
        })],
    );
    let uid = endpoints(&ns, "db").unwrap()["metadata"]["uid"].clone();
    let mirrored = until("a mirrored slice", || {
        let s = slices(&ns, "db");
        (s.len() == 1 && endpoint_count(&s[0]) == 2).then_some(s)
    })
    .await;
    let slice = &mirrored[0];
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslicemirroring-controller.k8s.io"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Endpoints");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["uid"], uid);
    // Check 39: the skip-mirror label removes the mirrored slices.
    kubectl(&[
        "-n",
        &ns,
        "label",
        "endpoints",
        "db",
        "endpointslice.kubernetes.io/skip-mirror=true",
    ]);
    until("the mirrored slice gone", || {
        slices(&ns, "db").is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn check_39_a_service_gaining_a_selector_loses_its_mirrored_slices() {
    let ns = namespace("check-39");
    apply(
        &ns,
        &[
            service("db", json!({"ports": [{"port": 5432}]})),
            json!({
                "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "db"},
                "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}],
            }),
        ],
    );
    until("a mirrored slice", || {
        (slices(&ns, "db").len() == 1).then_some(())
    })
    .await;
    kubectl(&[
        "-n",
        &ns,
        "patch",
        "service",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"app":"db"}}}"#,
    ]);
    until("only the controller's slice", || {
        let s = slices(&ns, "db");
        s.iter()
            .all(|s| {
                s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
                    == "endpointslice-controller.k8s.io"
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn check_40_and_41_labels_follow_the_service_with_the_headless_label_where_it_applies() {
    let ns = namespace("check-40");
    apply(
        &ns,
        &[
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "headless", "labels": {"app": "x"}},
                "spec": {"selector": {"app": "web"}, "clusterIP": "None", "ports": [{"port": 80}]},
            }),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "plain", "labels": {"app": "x"}},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
            }),
            pod("web-0", "web", &[], json!({})),
        ],
    );
    for (svc, headless) in [("headless", true), ("plain", false)] {
        let ep = until("the Endpoints with an address", || {
            let ep = endpoints(&ns, svc)?;
            (!subsets(&ep).is_empty()).then_some(ep)
        })
        .await;
        // v1.33+ marks its Endpoints as the endpoint controller's.
        let mut expected =
            json!({"app": "x", "endpoints.kubernetes.io/managed-by": "endpoint-controller"});
        if headless {
            expected["service.kubernetes.io/headless"] = json!("");
        }
        assert_eq!(ep["metadata"]["labels"], expected, "{svc}");
        let slices = until("a slice", || {
            let s = slices(&ns, svc);
            (!s.is_empty()).then_some(s)
        })
        .await;
        for slice in slices {
            let mut expected = json!({
                "app": "x",
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            });
            if headless {
                expected["service.kubernetes.io/headless"] = json!("");
            }
            assert_eq!(slice["metadata"]["labels"], expected, "{svc}");
        }
    }
}

#[tokio::test]
async fn check_42_and_43_dual_stack_services_have_a_slice_set_per_family_and_lose_one_with_it() {
    let ns = namespace("check-42");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}],
                       "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}),
            ),
            pod("web-0", "web", &[], json!({})),
        ],
    );
    let ips = until("web-0's IPs", || pod_ips(&ns, "web-0")).await;
    assert_eq!(ips.len(), 2, "dual-stack pods: {ips:?}");
    until("the IPv6 address in Endpoints", || {
        let s = subsets(&endpoints(&ns, "web")?);
        (s.len() == 1 && ips_of(&s[0], "addresses") == BTreeSet::from([ipv6_of(&ips)]))
            .then_some(())
    })
    .await;
    let both = until("one slice per family", || {
        let s = slices(&ns, "web");
        let families: BTreeSet<&str> = s
            .iter()
            .filter(|s| endpoint_count(s) == 1)
            .filter_map(|s| s["addressType"].as_str())
            .collect();
        (s.len() == 2 && families == BTreeSet::from(["IPv4", "IPv6"])).then_some(s.clone())
    })
    .await;
    for slice in &both {
        let expected = if slice["addressType"] == "IPv4" {
            ipv4_of(&ips)
        } else {
            ipv6_of(&ips)
        };
        assert_eq!(slice["endpoints"][0]["addresses"][0], expected.as_str());
    }
    // Check 43: the Service made single-stack IPv6 loses its IPv4 slices.
    kubectl(&[
        "-n",
        &ns,
        "patch",
        "service",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"SingleStack"}}"#,
    ]);
    until("only the IPv6 slice", || {
        let s = slices(&ns, "web");
        (s.len() == 1 && s[0]["addressType"] == "IPv6").then_some(())
    })
    .await;
}

#[tokio::test]
async fn check_44_a_deleted_services_endpoints_are_deleted_and_its_slices_collected() {
    let ns = namespace("check-44");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
            pod("web-0", "web", &[], json!({})),
        ],
    );
    until("a slice with the pod", || {
        (all_slice_endpoints(&slices(&ns, "web")).len() == 1).then_some(())
    })
    .await;
    kubectl(&["-n", &ns, "delete", "service", "web"]);
    until("Endpoints and slices gone", || {
        (endpoints(&ns, "web").is_none() && slices(&ns, "web").is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn check_44_endpoints_without_a_service_are_deleted_at_controller_start_unless_a_leader_lock()
{
    // Its own API server: a second controller must not run beside dev's on shared objects.
    let server = support::ApiServer::start(support::Backend::Memory, &[]);
    let endpoints = |name: &str| {
        let out = server.kubectl(&["get", "endpoints", name, "-o", "name"]);
        out.status.success()
    };
    let list = documents(&[
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "leftover"},
         "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 80}]}]}),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "lock",
         "annotations": {"control-plane.alpha.kubernetes.io/leader": "{}"}}}),
    ]);
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(&list));
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(endpoints("leftover"));
    let mut controller = testkit::process::Watched::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_svcplane")),
        vec![
            "controller".into(),
            "--manage=all".into(),
            "--leader-elect=false".into(),
            "--listen-http=127.0.0.1:0".into(),
            "--kubeconfig".into(),
            server.kubeconfig().into(),
        ],
        &[("RUST_LOG", "info")],
        &server.dir.path().join("controller.log"),
        None,
    );
    until("the leftover Endpoints deleted", || {
        (!endpoints("leftover")).then_some(())
    })
    .await;
    assert!(endpoints("lock"), "the leader lock stays");
    controller.kill();
}

#[tokio::test]
async fn check_45_endpoints_carry_zone_and_node_and_prefer_close_adds_zone_hints() {
    let ns = namespace("check-45");
    let mut objects = vec![service(
        "web",
        json!({"selector": {"app": "web"}, "ports": [{"port": 80}], "trafficDistribution": "PreferClose"}),
    )];
    objects.extend((0..3).map(|i| pod(&format!("web-{i}"), "web", &[], json!({}))));
    apply(&ns, &objects);
    let slices = until("three endpoints with hints", || {
        let s = slices(&ns, "web");
        let e = all_slice_endpoints(&s);
        (e.len() == 3 && e.iter().all(|e| e.get("hints").is_some())).then_some(s)
    })
    .await;
    let nodes = get("default", &["nodes"]).unwrap();
    let zone_of: BTreeMap<String, String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["metadata"]["labels"]["topology.kubernetes.io/zone"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    for endpoint in all_slice_endpoints(&slices) {
        let node = endpoint["nodeName"].as_str().expect("nodeName is set");
        let zone = &zone_of[node];
        assert_eq!(endpoint["zone"], zone.as_str(), "{endpoint}");
        assert_eq!(
            endpoint["hints"]["forZones"],
            json!([{"name": zone}]),
            "{endpoint}"
        );
    }
}

#[tokio::test]
async fn check_46_writes_carry_an_rfc_3339_trigger_time_and_a_no_op_sync_writes_nothing() {
    let ns = namespace("check-46");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
            pod("web-0", "web", &[], json!({})),
        ],
    );
    let ep = until("one address", || {
        let ep = endpoints(&ns, "web")?;
        (subsets(&ep).len() == 1).then_some(ep)
    })
    .await;
    let slices_before = until("one endpoint in slices", || {
        let s = slices(&ns, "web");
        (all_slice_endpoints(&s).len() == 1).then_some(s)
    })
    .await;
    let trigger = ep["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
        .as_str()
        .expect("the trigger time is set")
        .to_string();
    let parsed: k8s_openapi::jiff::Timestamp = trigger.parse().expect("RFC 3339");
    assert!(trigger.ends_with('Z'), "UTC: {trigger}");
    assert!(parsed <= k8s_openapi::jiff::Timestamp::now());
    // A change to the Service that changes nothing the controllers write: a sync, no write.
    kubectl(&[
        "-n",
        &ns,
        "annotate",
        "service",
        "web",
        "example.com/touched=yes",
    ]);
    kubectl(&["-n", &ns, "label", "pod", "web-0", "example.com/extra=yes"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ep_after = endpoints(&ns, "web").unwrap();
    assert_eq!(
        ep_after["metadata"]["resourceVersion"],
        ep["metadata"]["resourceVersion"]
    );
    assert_eq!(
        resource_versions(&slices(&ns, "web")),
        resource_versions(&slices_before)
    );
}

#[tokio::test]
async fn check_47_an_external_name_service_gets_neither_endpoints_nor_slices() {
    let ns = namespace("check-47");
    apply(
        &ns,
        &[
            service(
                "db",
                json!({"type": "ExternalName", "externalName": "db.example.com", "selector": {"app": "db"}}),
            ),
            pod("db-0", "db", &[], json!({})),
        ],
    );
    until("the pod running", || pod_ips(&ns, "db-0")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(endpoints(&ns, "db").is_none());
    assert!(slices(&ns, "db").is_empty());
}

#[tokio::test]
async fn the_seeds_kubectl_get_endpoints_lists_the_tomcat_pods_and_describe_shows_them() {
    let ns = namespace("seeds");
    let out = dev().kubectl(&["-n", &ns, "apply", "-f", "examples/tomcat.yaml"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let ip1 = ipv4_of(&until("tomcat-1's IP", || pod_ips(&ns, "tomcat-1")).await);
    let ip2 = ipv4_of(&until("tomcat-2's IP", || pod_ips(&ns, "tomcat-2")).await);
    let listed = until("both pods in kubectl get endpoints", || {
        let out = dev().kubectl(&["-n", &ns, "get", "endpoints"]);
        let text = support::stdout(&out);
        (text.contains(&format!("{ip1}:8080")) && text.contains(&format!("{ip2}:8080")))
            .then_some(out)
    })
    .await;
    assert!(
        support::stdout(&listed).contains("tomcat-service"),
        "{}",
        support::stdout(&listed)
    );
    assert!(
        support::stderr(&listed).contains(
            "Warning: v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"
        ),
        "kubectl shows kube-apiserver's deprecation warning: {}",
        support::stderr(&listed)
    );
    let described = kubectl(&["-n", &ns, "describe", "service", "tomcat-service"]);
    let line = described
        .lines()
        .find(|l| l.starts_with("Endpoints:"))
        .unwrap_or_else(|| panic!("{described}"));
    assert!(
        line.contains(&format!("{ip1}:8080")) || line.contains(&format!("{ip2}:8080")),
        "{described}"
    );
    // `kubernetes` points at the API server, as the seed's listing shows.
    let default = kubectl(&["get", "endpoints", "kubernetes", "-n", "default"]);
    assert!(
        default.contains(&format!("127.0.0.1:{}", dev().api_port)),
        "{default}"
    );
}

#[tokio::test]
async fn deleting_in_the_foreground_or_orphaning_dependents_is_honoured() {
    let ns = namespace("cascade");
    apply(
        &ns,
        &[
            service(
                "fg",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
            service("owner", json!({"ports": [{"port": 80}]})),
            pod("web-0", "web", &[], json!({})),
        ],
    );
    until("a slice with the pod", || {
        (all_slice_endpoints(&slices(&ns, "fg")).len() == 1).then_some(())
    })
    .await;
    kubectl(&["-n", &ns, "delete", "service", "fg", "--cascade=foreground"]);
    // kubectl waited for the Service to go; in the foreground its slices went first.
    assert!(get(&ns, &["service", "fg"]).is_none());
    assert!(slices(&ns, "fg").is_empty());
    // Orphaning: a Lease owned by a selectorless Service (no controller writes either) keeps
    // going without its owner. (A Service's own slices are no test of it: the EndpointSlice
    // controller deletes slices of a Service they are not owned by, upstream too.)
    let owner_uid = get(&ns, &["service", "owner"]).unwrap()["metadata"]["uid"].clone();
    apply(
        &ns,
        &[json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "dependent", "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": "owner", "uid": owner_uid,
                "blockOwnerDeletion": true,
            }]},
            "spec": {"holderIdentity": "test"},
        })],
    );
    kubectl(&["-n", &ns, "delete", "service", "owner", "--cascade=orphan"]);
    assert!(get(&ns, &["service", "owner"]).is_none());
    let lease = until("the orphaned Lease without its owner", || {
        let lease = get(&ns, &["lease", "dependent"])?;
        lease["metadata"]
            .get("ownerReferences")
            .is_none()
            .then_some(lease)
    })
    .await;
    assert_eq!(lease["spec"]["holderIdentity"], "test");
    // And in the background (kubectl's default), a dependent goes after its owner.
    let holder_uid = {
        apply(&ns, &[service("holder", json!({"ports": [{"port": 80}]}))]);
        get(&ns, &["service", "holder"]).unwrap()["metadata"]["uid"].clone()
    };
    apply(
        &ns,
        &[json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "held", "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": "holder", "uid": holder_uid,
            }]},
        })],
    );
    kubectl(&["-n", &ns, "delete", "service", "holder"]);
    until("the Lease collected", || {
        get(&ns, &["lease", "held"]).is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_clusters_own_services_resolve_in_dns() {
    let dev = dev();
    let kubernetes = dev.dig(&["kubernetes.default.svc.cluster.local"]);
    assert_eq!(kubernetes.answers, ["A 10.96.0.1"], "{kubernetes:?}");
    let dns = dev.dig(&["kube-dns.kube-system.svc.cluster.local"]);
    assert_eq!(dns.answers, ["A 10.96.0.10"], "{dns:?}");
    let srv = dev.dig(&["SRV", "_dns._udp.kube-dns.kube-system.svc.cluster.local"]);
    assert_eq!(
        srv.answers,
        ["SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."]
    );
    let slices = slices("kube-system", "kube-dns");
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0]["endpoints"][0]["addresses"], json!(["127.0.0.1"]));
}

#[tokio::test]
async fn headless_names_resolve_to_the_pods_the_controller_lists() {
    let ns = namespace("headless");
    apply(
        &ns,
        &[
            service(
                "web",
                json!({"selector": {"app": "web"}, "clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            pod("web-0", "web", &[], json!({})),
            pod("web-1", "web", &[], json!({})),
        ],
    );
    let mut expected: Vec<String> = Vec::new();
    for name in ["web-0", "web-1"] {
        let ips = until("the pod's IPs", || pod_ips(&ns, name)).await;
        expected.push(format!("A {}", ipv4_of(&ips)));
    }
    expected.sort();
    let name = format!("web.{ns}.svc.cluster.local");
    until("both pods in DNS", || {
        let mut answers = dev().dig(&[&name]).answers;
        answers.sort();
        (answers == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_controllers_warning_events_show_in_kubectl_get_events() {
    let ns = namespace("events");
    // 1 001 addresses in one subset: mirroring takes 1 000 and says why it skipped one.
    let addresses: Vec<Value> = (0..1001)
        .map(|i| json!({"ip": format!("10.1.{}.{}", i / 250, i % 250 + 1)}))
        .collect();
    apply(
        &ns,
        &[
            service("big", json!({"ports": [{"port": 80}]})),
            json!({
                "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "big"},
                "subsets": [{"addresses": addresses, "ports": [{"port": 80}]}],
            }),
        ],
    );
    until("1 000 mirrored endpoints", || {
        (all_slice_endpoints(&slices(&ns, "big")).len() == 1000).then_some(())
    })
    .await;
    let line = until("the warning in kubectl get events", || {
        let out = dev().kubectl(&["-n", &ns, "get", "events"]);
        support::stdout(&out)
            .lines()
            .find(|l| l.contains("TooManyAddressesToMirror"))
            .map(str::to_string)
    })
    .await;
    assert!(line.contains("Warning"), "{line}");
    assert!(
        line.contains("A max of 1000 addresses can be mirrored to EndpointSlices per Endpoints subset. 1 addresses were skipped"),
        "{line}"
    );
}

/// The pods of the set-based selector tests: each named for why it is in or out of
/// `app in (a,b),tier notin (cache),!legacy,release`, with its labels.
fn set_based_pods() -> Vec<(&'static str, Value)> {
    vec![
        ("in-a", json!({"app": "a", "tier": "web", "release": "1"})),
        // No `tier` label at all satisfies `notin`.
        ("in-b", json!({"app": "b", "release": "2"})),
        (
            "out-app",
            json!({"app": "c", "tier": "web", "release": "1"}),
        ),
        (
            "out-tier",
            json!({"app": "a", "tier": "cache", "release": "1"}),
        ),
        (
            "out-legacy",
            json!({"app": "a", "legacy": "yes", "release": "1"}),
        ),
        ("out-release", json!({"app": "a", "tier": "web"})),
    ]
}

/// The annotation of the set-based selector tests.
const SET_BASED: &str = "app in (a,b),tier notin (cache),!legacy,release";

#[tokio::test]
async fn the_selector_annotation_picks_exactly_the_pods_its_set_based_requirements_allow() {
    let ns = namespace("set-based");
    let mut objects: Vec<Value> = set_based_pods()
        .into_iter()
        .map(|(name, labels)| {
            let mut p = pod(name, "x", &[], json!({}));
            p["metadata"]["labels"] = labels;
            p
        })
        .collect();
    objects.push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "picky", "annotations": {"svcplane.io/selector": SET_BASED}},
        "spec": {"ports": [{"port": 80}]}}));
    create(&ns, &objects);
    let mut want = BTreeSet::new();
    for name in ["in-a", "in-b"] {
        want.insert(ipv4_of(
            &until("the pod's IPs", || pod_ips(&ns, name)).await,
        ));
    }
    let (ep, picked) = until("Endpoints and a slice of the two selected pods", || {
        let ep = endpoints(&ns, "picky")?;
        let picked: BTreeSet<String> = all_slice_endpoints(&slices(&ns, "picky"))
            .iter()
            .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_string))
            .filter(|a| !a.contains(':'))
            .collect();
        let addresses = subsets(&ep).first().map(|s| ips_of(s, "addresses"))?;
        (addresses == want && picked == want).then_some((ep, picked))
    })
    .await;
    assert_eq!(picked, want);
    assert_eq!(
        ep["metadata"]["labels"]["endpoints.kubernetes.io/managed-by"],
        "endpoint-controller.svcplane.io"
    );
    assert_eq!(
        ep["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"],
        "true"
    );
    for slice in slices(&ns, "picky") {
        assert_eq!(
            slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.svcplane.io",
            "{slice}"
        );
    }
    // A pod that gains `legacy` leaves both.
    kubectl(&["-n", &ns, "label", "pod", "in-b", "legacy=now"]);
    let in_a = ipv4_of(&pod_ips(&ns, "in-a").unwrap());
    until("in-b gone from the Endpoints", || {
        let ep = endpoints(&ns, "picky")?;
        let addresses = subsets(&ep).first().map(|s| ips_of(s, "addresses"))?;
        (addresses == BTreeSet::from([in_a.clone()])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_malformed_selector_annotation_writes_nothing_and_describe_shows_why() {
    let ns = namespace("malformed");
    create(
        &ns,
        &[
            pod("p", "a", &[], json!({})),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "broken", "annotations": {"svcplane.io/selector": "app in (a"}},
                "spec": {"ports": [{"port": 80}]}}),
        ],
    );
    let described = until("the Warning event in kubectl describe svc", || {
        let text = kubectl(&["-n", &ns, "describe", "svc", "broken"]);
        text.contains("InvalidSelectorAnnotation").then_some(text)
    })
    .await;
    assert!(described.contains("Warning"), "{described}");
    assert!(described.contains("at column 10"), "{described}");
    assert!(endpoints(&ns, "broken").is_none());
    assert!(slices(&ns, "broken").is_empty());
}
