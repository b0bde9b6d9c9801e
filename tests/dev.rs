//! `svcplane dev` as a process, used the way the README says: kubectl against its API, dig
//! against its DNS, Services getting ClusterIPs and NodePorts from the configured pools at
//! create time, and released values coming back after the hold.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::Dev;

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The README's first set-up command: the one that runs `svcplane dev`.
fn readme_dev_command() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let setup = readme
        .split("## Set-up")
        .nth(1)
        .expect("the README has a set-up section");
    let block = setup
        .split("```sh\n")
        .nth(1)
        .expect("a first command block");
    block.split("\n```").next().unwrap().trim().to_string()
}

#[tokio::test]
async fn the_readmes_first_command_runs_dev_and_the_examples_answer_in_dns() {
    let command = readme_dev_command();
    assert!(
        command.starts_with("apt-get update && apt-get install -y"),
        "{command}"
    );
    assert!(
        command.ends_with("cargo run --release -- dev"),
        "the first command runs svcplane dev with its defaults: {command}"
    );
    // The same binary with the same defaults, on free ports.
    let dev = Dev::start(&[]);
    assert!(
        dev.kubeconfig().is_file(),
        "./.svcplane/kubeconfig is written"
    );
    let log = dev.log();
    assert!(log.contains("kubectl apply -f examples/"), "{log}");
    assert!(
        log.contains(&format!(
            "dig @127.0.0.1 -p {} petclinic.default.svc.cluster.local",
            dev.dns_port
        )),
        "{log}"
    );
    let applied = dev.kubectl(&["apply", "-f", "examples/"]);
    assert!(applied.status.success(), "{}", support::stderr(&applied));
    assert!(support::stdout(&applied).contains("service/petclinic created"));
    let api: Api<Service> = Api::default_namespaced(dev.client().await);
    let petclinic = api.get("petclinic").await.unwrap();
    let ip = petclinic.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    assert!(
        ip.parse::<IpAddr>().is_ok(),
        "petclinic got a ClusterIP: {ip}"
    );
    assert_eq!(
        petclinic.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
        Some(31080)
    );
    let name = "petclinic.default.svc.cluster.local";
    support::eventually("dig to answer petclinic's ClusterIP", || {
        dev.dig(&[name]).answers == [format!("A {ip}")]
    })
    .await;
    let srv = dev.dig(&["SRV", &format!("_http._tcp.{name}")]);
    assert_eq!(srv.status, "NOERROR");
    assert_eq!(srv.answers, [format!("SRV 0 100 8080 {name}.")]);
    let external = dev.dig(&["my-database.default.svc.cluster.local"]);
    assert_eq!(
        external.answers.first().map(String::as_str),
        Some("CNAME db.example.com.")
    );
}

fn in_range(ip: &str, first: u8, last: u8) -> bool {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            o[..3] == [10, 96, 0] && (first..=last).contains(&o[3])
        }
        _ => false,
    }
}

#[tokio::test]
async fn services_get_cluster_ips_from_the_upper_band_and_node_ports_by_type() {
    let dev = Dev::start(&["--service-cluster-ip-range", "10.96.0.0/24"]);
    let api: Api<Service> = Api::default_namespaced(dev.client().await);
    for i in 0..10 {
        let created = api
            .create(
                &PostParams::default(),
                &service(&format!("c{i}"), json!({"ports": [{"port": 80}]})),
            )
            .await
            .unwrap();
        let spec = created.spec.unwrap();
        let ip = spec.cluster_ip.unwrap();
        assert!(
            in_range(&ip, 17, 254),
            "{ip} is in the upper band of 10.96.0.0/24"
        );
        assert_eq!(spec.cluster_ips.unwrap(), std::slice::from_ref(&ip));
        assert_eq!(spec.ip_families.unwrap(), ["IPv4"]);
        assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
        assert!(
            spec.ports.unwrap()[0].node_port.is_none(),
            "a ClusterIP Service gets no nodePort"
        );
    }
    for (name, type_) in [("np", "NodePort"), ("lb", "LoadBalancer")] {
        let created = api
            .create(
                &PostParams::default(),
                &service(
                    name,
                    json!({"type": type_, "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}),
                ),
            )
            .await
            .unwrap();
        for port in created.spec.unwrap().ports.unwrap() {
            let n = port.node_port.expect("a nodePort");
            assert!(
                (30086..=32767).contains(&n),
                "{type_}: {n} is in the upper band of 30000-32767"
            );
        }
    }
}

#[tokio::test]
async fn a_requested_cluster_ip_that_is_taken_is_refused_with_422() {
    let dev = Dev::start(&["--service-cluster-ip-range", "10.96.0.0/24"]);
    let api: Api<Service> = Api::default_namespaced(dev.client().await);
    let first = api
        .create(
            &PostParams::default(),
            &service(
                "first",
                json!({"clusterIP": "10.96.0.20", "ports": [{"port": 53}]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        first.spec.unwrap().cluster_ip.as_deref(),
        Some("10.96.0.20")
    );
    let status = api_error(
        api.create(
            &PostParams::default(),
            &service(
                "second",
                json!({"clusterIP": "10.96.0.20", "ports": [{"port": 53}]}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Service \"second\" is invalid: spec.clusterIPs: Invalid value: [\"10.96.0.20\"]: failed to allocate IP 10.96.0.20: provided IP is already allocated"
    );
    let outside = api_error(
        api.create(
            &PostParams::default(),
            &service(
                "third",
                json!({"clusterIP": "10.97.0.10", "ports": [{"port": 53}]}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert!(outside.message.ends_with("failed to allocate IP 10.97.0.10: the provided IP (10.97.0.10) is not in the valid range. The range of valid IPs is 10.96.0.0/24"), "{}", outside.message);
    assert!(api.get_opt("second").await.unwrap().is_none());
}

#[tokio::test]
async fn a_dual_stack_range_pair_gives_prefer_dual_stack_two_cluster_ips() {
    let dev = Dev::start(&[
        "--service-cluster-ip-range",
        "10.96.0.0/24,fd00:10:96::/112",
    ]);
    let api: Api<Service> = Api::default_namespaced(dev.client().await);
    let dual = api
        .create(
            &PostParams::default(),
            &service(
                "dual",
                json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap();
    let spec = dual.spec.unwrap();
    assert_eq!(spec.ip_families.unwrap(), ["IPv4", "IPv6"]);
    let ips = spec.cluster_ips.unwrap();
    assert_eq!(ips.len(), 2);
    assert!(
        ips[0].parse::<std::net::Ipv4Addr>().is_ok()
            && ips[1].parse::<std::net::Ipv6Addr>().is_ok(),
        "{ips:?}"
    );
    assert!(ips[1].starts_with("fd00:10:96::"), "{ips:?}");
    assert_eq!(spec.cluster_ip.as_deref(), Some(ips[0].as_str()));
    let single = api
        .create(
            &PostParams::default(),
            &service("single", json!({"ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    assert_eq!(
        single.spec.unwrap().cluster_ips.unwrap().len(),
        1,
        "no policy: single-stack"
    );
}

#[tokio::test]
async fn a_deleted_services_node_port_goes_to_another_service_after_the_hold() {
    let dev = Dev::start(&["--hold", "3s"]);
    let api: Api<Service> = Api::default_namespaced(dev.client().await);
    let spec = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]});
    api.create(&PostParams::default(), &service("old", spec.clone()))
        .await
        .unwrap();
    api.delete("old", &DeleteParams::default()).await.unwrap();
    let started = Instant::now();
    let mut refusals = 0;
    loop {
        match api
            .create(&PostParams::default(), &service("new", spec.clone()))
            .await
        {
            Ok(created) => {
                assert_eq!(
                    created.spec.unwrap().ports.unwrap()[0].node_port,
                    Some(30100)
                );
                break;
            }
            Err(e) => {
                let status = api_error(e);
                assert_eq!(
                    status.message,
                    "Service \"new\" is invalid: spec.ports[0].nodePort: Invalid value: 30100: provided port is already allocated"
                );
                refusals += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the nodePort never came free"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refusals > 0,
        "the nodePort was held for the deleted Service at first"
    );
}

#[tokio::test]
async fn values_allocated_for_a_write_a_later_webhook_denies_are_given_back() {
    let webhook = testkit::webhook::TestWebhook::start();
    let ca = webhook.ca_file().display().to_string();
    // Hold 0: given back means free for anyone at once, as upstream (with a hold, the values
    // stay held for the denied Service's name, like any release).
    let dev = Dev::start(&[
        "--hold",
        "0s",
        "--service-cluster-ip-range",
        "10.96.0.0/24",
        "--service-admission-webhook",
        &webhook.url(),
        "--admission-ca",
        &ca,
    ]);
    let api: Api<Service> = Api::default_namespaced(dev.client().await);
    let denied: Service = serde_json::from_value(json!({"metadata": {"name": "denied", "labels": {"webhook": "deny"}},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.50", "ports": [{"port": 80, "nodePort": 30200}]}})).unwrap();
    let status = api_error(
        api.create(&PostParams::default(), &denied)
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    // The webhook saw the allocation's answer: the requested values were taken for it...
    let seen = webhook.requests();
    assert_eq!(
        seen.last().unwrap()["request"]["object"]["spec"]["clusterIPs"],
        json!(["10.96.0.50"])
    );
    // ...and given back when the write was denied.
    let other = service(
        "other",
        json!({"type": "NodePort", "clusterIP": "10.96.0.50", "ports": [{"port": 80, "nodePort": 30200}]}),
    );
    let created = api.create(&PostParams::default(), &other).await.unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.50"));
    assert_eq!(spec.ports.unwrap()[0].node_port, Some(30200));
}

#[tokio::test]
async fn replacing_a_service_with_its_original_manifest_keeps_its_allocations() {
    let dev = Dev::start(&[]);
    let manifest = support::write(
        dev.dir(),
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\nspec:\n  type: NodePort\n  selector:\n    app: np\n  ports:\n  - name: http\n    port: 80\n",
    );
    let created = dev.kubectl(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(created.status.success(), "{}", support::stderr(&created));
    let api: Api<Service> = Api::default_namespaced(dev.client().await);
    let before = api.get("np").await.unwrap().spec.unwrap();
    // The manifest carries neither clusterIP nor nodePort: they are kept, as upstream does.
    let replaced = dev.kubectl(&["replace", "-f", manifest.to_str().unwrap()]);
    assert!(replaced.status.success(), "{}", support::stderr(&replaced));
    let after = api.get("np").await.unwrap().spec.unwrap();
    assert_eq!(after.cluster_ip, before.cluster_ip);
    assert_eq!(after.cluster_ips, before.cluster_ips);
    assert_eq!(
        after.ports.unwrap()[0].node_port,
        before.ports.unwrap()[0].node_port
    );
}

#[tokio::test]
async fn kubectl_create_service_sends_protobuf_and_still_gets_a_cluster_ip() {
    let dev = Dev::start(&["--service-cluster-ip-range", "10.96.0.0/24"]);
    let created = dev.kubectl(&["create", "service", "clusterip", "web2", "--tcp=80:8080"]);
    assert!(created.status.success(), "{}", support::stderr(&created));
    assert_eq!(support::stdout(&created), "service/web2 created\n");
    let api: Api<Service> = Api::default_namespaced(dev.client().await);
    let spec = api.get("web2").await.unwrap().spec.unwrap();
    let ip = spec.cluster_ip.unwrap();
    assert!(in_range(&ip, 17, 254), "{ip} was allocated at admission");
    assert_eq!(spec.cluster_ips.unwrap(), [ip]);
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.port, 80);
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
    );
}

#[tokio::test]
async fn the_dns_cache_and_the_controllers_share_one_watch_of_endpoint_slices() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let dev = Dev::start(&["--audit-log", audit.to_str().unwrap()]);
    // Both readers are up once dev says DNS is serving (the controllers synced before it).
    let watches = |resource: &str| {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["verb"] == "watch" && e["resource"] == resource)
            .count()
    };
    assert!(dev.log().contains("svcplane dns: serving"));
    assert_eq!(watches("endpointslices"), 1, "one shared watch");
    // Services: the shared watch, and the releaser's own.
    assert_eq!(watches("services"), 2);
    // Pods and nodes are the controllers' alone; namespaces the DNS cache's.
    assert_eq!(watches("pods"), 1);
    assert_eq!(watches("namespaces"), 1);
}

#[test]
fn cluster_dns_forwards_other_names_to_the_resolv_conf_nameservers() {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("db.example.com");
    std::fs::write(
        &zone,
        "$ORIGIN example.com.\n@ 3600 IN SOA ns.example.com. admin.example.com. 1 7200 3600 1209600 3600\n@ 3600 IN NS ns.example.com.\nns 3600 IN A 192.0.2.53\n@ 300 IN A 192.0.2.10\n",
    )
    .unwrap();
    let upstream = testkit::CoreDns::start(&format!(
        ".:{{port}} {{\n  bind 127.0.0.1\n  ready 127.0.0.1:{{ready}}\n  file {} example.com\n}}\n",
        zone.display()
    ));
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver 127.0.0.1:{}\n", upstream.port)).unwrap();
    let dev = Dev::start(&["--resolv-conf", resolv.to_str().unwrap()]);
    // The newcomer's first minute: an external name through the cluster's DNS.
    let reply = dev.dig(&["+rec", "example.com", "A"]);
    assert_eq!(reply.status, "NOERROR", "{}", dev.log());
    assert_eq!(reply.answers, ["A 192.0.2.10"]);
    assert_eq!(
        dev.dig(&["+rec", "nothing.example.com", "A"]).status,
        "NXDOMAIN"
    );
    // And the cluster's own names as before.
    assert_eq!(
        dev.dig(&["kubernetes.default.svc.cluster.local", "A"])
            .status,
        "NOERROR"
    );
}
