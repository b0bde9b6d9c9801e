//! A kube-apiserver for benchmarks: starts an upstream [`testkit::Cluster`] without
//! controllers, loads a manifests file (Namespaces, Services, EndpointSlices) into it, prints one
//! line `ready KUBECONFIG APISERVER_PGID ETCD_PGID`, and keeps the cluster until its standard
//! input closes. `bench/dns.sh` feeds CoreDNS's kubernetes plugin from it.
//!
//!   cargo run --release -p testkit --example bench_cluster -- MANIFESTS [SERVICE_CIDR]

use std::io::Read;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use testkit::{Cluster, ClusterOptions};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: bench_cluster MANIFESTS [SERVICE_CIDR]");
    let cidr = args.next().unwrap_or_else(|| "10.96.0.0/12".to_string());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut objects: Vec<Value> = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document).expect("a YAML document");
        if !value.is_null() {
            objects.push(value);
        }
    }
    let cluster = Cluster::start(ClusterOptions {
        controllers: None,
        node_port_range: None,
        service_cidrs: Some(cidr),
        controller_manager_args: Vec::new(),
    });
    let client = cluster.client("admin").await;
    let started = std::time::Instant::now();
    for kind in ["Namespace", "Service", "EndpointSlice"] {
        let batch: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
        futures::stream::iter(batch)
            .map(|object| create(&client, object))
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }
    eprintln!(
        "bench_cluster: loaded {} objects in {:.0?}",
        objects.len(),
        started.elapsed()
    );
    let (apiserver, etcd) = cluster.process_groups();
    println!(
        "ready {} {apiserver} {etcd}",
        cluster.kubeconfig("admin").display()
    );
    // Until the caller closes our standard input.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

async fn create(client: &kube::Client, object: &Value) {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let pp = PostParams::default();
    let result = match object["kind"].as_str() {
        Some("Namespace") => Api::<Namespace>::all(client.clone())
            .create(&pp, &serde_json::from_value(object.clone()).unwrap())
            .await
            .map(|_| ()),
        Some("Service") => Api::<Service>::namespaced(client.clone(), namespace)
            .create(&pp, &serde_json::from_value(object.clone()).unwrap())
            .await
            .map(|_| ()),
        Some("EndpointSlice") => Api::<EndpointSlice>::namespaced(client.clone(), namespace)
            .create(&pp, &serde_json::from_value(object.clone()).unwrap())
            .await
            .map(|_| ()),
        other => panic!("bench_cluster loads no {other:?}"),
    };
    if let Err(e) = result {
        panic!("create {}: {e}", object["metadata"]);
    }
}
