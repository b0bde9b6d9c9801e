//! What the DNS crate's tests share: Corefiles, and a cluster built from the DNS
//! specification's fixture that routers answer from and that changes under them.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::sync::Arc;

use cache::{Cache, Event, Key, Kind, Object};
use dns::chain::{ClusterSource, Router};
use dns::index::Index;
use dns::metrics::Metrics;
use tokio::sync::watch;

/// kubeadm's Corefile (cluster answers not cached, loadbalance), one caching cluster answers,
/// and one with neither cache nor loadbalance but a short TTL.
pub(crate) const COREFILES: [&str; 3] = [
    ".:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . 127.0.0.1:1053 {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    loadbalance
}
",
    ".:53 {
    prometheus :9153
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods verified
       endpoint_pod_names
    }
    cache 30
    loadbalance
}
",
    "cluster.local:53 in-addr.arpa:53 {
    prometheus :9153
    kubernetes cluster.local in-addr.arpa {
       ttl 0
       ignore empty_service
    }
}
",
];

/// The DNS specification's fixture (read from beside this file, so the fuzz targets that
/// include this module find it too).
fn fixture() -> cache::manifests::Loaded {
    let text = include_str!("../fixtures/testns.yaml");
    cache::manifests::parse(std::path::Path::new("testns.yaml"), text).unwrap()
}

/// A headless Service beside the fixture with 40 ready endpoints: its answers outgrow 512 bytes
/// and most EDNS buffers, so replies are cut.
fn big() -> Vec<Event> {
    let endpoints: String = (1..=40)
        .map(|i| format!("  - addresses: [10.250.0.{i}]\n"))
        .collect();
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: testns}}\n\
         spec: {{clusterIP: None, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: big-1, namespace: testns, labels: {{kubernetes.io/service-name: big}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints:\n{endpoints}"
    );
    let loaded = cache::manifests::parse(std::path::Path::new("big.yaml"), &text).unwrap();
    loaded
        .services
        .into_iter()
        .map(|s| Event::Apply(Object::Service(s)))
        .chain(
            loaded
                .slices
                .into_iter()
                .map(|s| Event::Apply(Object::EndpointSlice(s))),
        )
        .collect()
}

/// One Corefile's router over a cluster cache, and the metrics it counts into.
pub(crate) struct Served {
    pub(crate) router: Arc<Router>,
    pub(crate) metrics: Metrics,
}

/// The cluster both routers answer from, and how it changes.
pub(crate) struct Cluster {
    cache: Cache,
    index: watch::Sender<Arc<Index>>,
    config: Arc<dns::config::Config>,
}

impl Cluster {
    pub(crate) fn new(corefile: &str) -> (Cluster, dns::plan::Plan) {
        let plan = dns::corefile::parse(corefile, "Corefile", |_| None)
            .unwrap()
            .plan(&|_| Ok(vec!["127.0.0.1:1053".parse().unwrap()]))
            .unwrap();
        let config = plan
            .kubernetes
            .as_ref()
            .unwrap()
            .config(vec!["10.96.0.10".parse().unwrap()])
            .unwrap();
        let cache = Cache::new(&[
            Kind::Namespaces,
            Kind::Services,
            Kind::EndpointSlices,
            Kind::Pods,
        ]);
        cache.apply(fixture().into_events());
        cache.apply(big());
        let index = Index::build(cache.current(), &config);
        let (tx, _) = watch::channel(Arc::new(index));
        let cluster = Cluster {
            cache,
            index: tx,
            config: Arc::new(config),
        };
        (cluster, plan)
    }

    pub(crate) fn serve(&self, plan: &dns::plan::Plan) -> Served {
        let metrics = Metrics::default();
        let source = ClusterSource {
            config: self.config.clone(),
            index: self.index.subscribe(),
        };
        let listen = vec![vec!["127.0.0.1:53".parse().unwrap()]; plan.blocks.len()];
        let service = dns::service::build(plan, &listen, Some(&source), &metrics).unwrap();
        Served {
            router: service.routers[0].1.clone(),
            metrics,
        }
    }

    /// Applies change `n` of a fixed list (each undone by the next one of its pair) and
    /// publishes the next index, as the server's follower does.
    pub(crate) fn change(&self, n: usize) {
        let loaded = fixture();
        let service = |name: &str| {
            let svc = loaded
                .services
                .iter()
                .find(|s| s.key.name == name)
                .unwrap()
                .clone();
            Event::Apply(Object::Service(svc))
        };
        let slice = |name: &str| {
            let s = loaded
                .slices
                .iter()
                .find(|s| s.key.name == name)
                .unwrap()
                .clone();
            Event::Apply(Object::EndpointSlice(s))
        };
        let event = match n % 8 {
            0 => Event::Delete(Kind::Services, Key::new("testns", "svc1")),
            1 => service("svc1"),
            2 => Event::Delete(Kind::EndpointSlices, Key::new("testns", "hdls1-v4")),
            3 => slice("hdls1-v4"),
            4 => Event::Delete(Kind::Namespaces, Key::new("", "testns")),
            5 => Event::Apply(Object::Namespace("testns".into())),
            6 => Event::Delete(Kind::Services, Key::new("testns", "internal")),
            _ => service("internal"),
        };
        self.cache.apply([event]);
        let next = self.index.borrow().next(self.cache.current(), &self.config);
        self.index.send_replace(Arc::new(next));
    }
}
