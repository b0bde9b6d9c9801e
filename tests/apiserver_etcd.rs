//! `svcplane apiserver` on etcd across restarts and compactions: objects keep their uids and
//! resourceVersions, revisions keep growing, a watcher resumes from its revision without a
//! relist, and a revision compacted away is an in-stream 410 that kube-runtime recovers from by
//! relisting. The compaction test brings its own etcd, so compacting it disturbs no other test.

mod support;

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use support::{ApiServer, Backend};

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap()
}

fn rv<K: kube::Resource>(object: &K) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

async fn etcd(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap()
}

/// Compacts the shared etcd at its current revision, after two unrelated writes so the
/// revisions a watcher would resume from (its last one + 1) are gone.
async fn compact_now(endpoint: &str) -> i64 {
    let mut client = etcd(endpoint).await;
    client.put("/compaction-marker", "x", None).await.unwrap();
    let put = client.put("/compaction-marker", "y", None).await.unwrap();
    let revision = put.header().unwrap().revision();
    client.compact(revision, None).await.unwrap();
    revision
}

fn lists_of(server: &ApiServer, resource: &str) -> usize {
    server
        .audit()
        .iter()
        .filter(|a| a["verb"] == "list" && a["resource"] == resource)
        .count()
}

#[tokio::test]
async fn objects_survive_a_restart_with_their_uids_and_revisions() {
    let mut server = ApiServer::start(Backend::Etcd, &[]);
    let client = server.client().await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let a = services
        .create(&PostParams::default(), &service("a"))
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
    )
    .unwrap();
    let p = pods.create(&PostParams::default(), &pod).await.unwrap();
    server.restart();
    let client = server.client().await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let a2 = services.get("a").await.unwrap();
    let p2 = pods.get("p").await.unwrap();
    assert_eq!(
        (a2.metadata.uid.clone(), rv(&a2)),
        (a.metadata.uid.clone(), rv(&a))
    );
    assert_eq!(
        (p2.metadata.uid.clone(), rv(&p2)),
        (p.metadata.uid.clone(), rv(&p))
    );
    assert_eq!(
        a2.metadata.creation_timestamp,
        a.metadata.creation_timestamp
    );
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {}})).unwrap();
    let l = Api::<Lease>::default_namespaced(client.clone())
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    assert!(
        rv(&l) > rv(&p) && rv(&p) > rv(&a),
        "revisions keep increasing across resources and restarts"
    );
    // The default namespaces are not recreated: their uids survive too.
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let before = ns.get("default").await.unwrap().metadata.uid;
    server.restart();
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(server.client().await);
    assert_eq!(ns.get("default").await.unwrap().metadata.uid, before);
}

#[tokio::test]
async fn a_watcher_resumes_after_a_restart_without_relisting() {
    let mut server = ApiServer::start(Backend::Etcd, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    api.create(&PostParams::default(), &service("before"))
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<Service>();
    let config = watcher::Config::default().timeout(2);
    let stream = reflector(writer, watcher(api.clone(), config).default_backoff());
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    let lists = lists_of(&server, "services");
    server.restart();
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    api.create(&PostParams::default(), &service("after"))
        .await
        .unwrap();
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    let names = |reader: &reflector::Store<Service>| {
        let mut names: Vec<String> = reader
            .state()
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names
    };
    support::eventually("the reflector to see the writes after the restart", || {
        names(&reader) == ["after"]
    })
    .await;
    assert_eq!(
        lists_of(&server, "services"),
        lists,
        "resumed from its revision: no relist"
    );
    task.abort();
}

#[tokio::test]
async fn a_compacted_revision_is_an_in_stream_410_and_the_reflector_relists_to_the_truth() {
    // An etcd of its own: compacting the shared one would expire the other tests' watches.
    let etcd = testkit::Etcd::start();
    // No bookmarks for a long time, so the watcher's revision stays where its last event was.
    let server = ApiServer::start(
        Backend::Etcd,
        &[
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--watch-bookmark-interval",
            "1h",
        ],
    );
    let client = server.client().await;
    let api: Api<Service> = Api::default_namespaced(client.clone());
    let first = api
        .create(&PostParams::default(), &service("one"))
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().timeout(2)).default_backoff(),
    );
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    let lists = lists_of(&server, "services");
    let compacted = compact_now(&etcd.endpoint()).await;

    // A raw watch from before the compaction: HTTP 200, then one ERROR event, then the end.
    let path = format!(
        "/api/v1/namespaces/default/services?watch=true&resourceVersion={}",
        rv(&first)
    );
    let (status, body) = support::http(server.port, "GET", &path, &[], None).unwrap();
    assert_eq!(status, 200);
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{body}");
    assert_eq!(lines[0]["type"], "ERROR");
    assert_eq!(lines[0]["object"]["code"], 410);
    assert_eq!(lines[0]["object"]["reason"], "Expired");
    assert_eq!(
        lines[0]["object"]["message"],
        format!("too old resource version: {} ({compacted})", rv(&first))
    );

    // The watcher's next watch (after its 2 s timeout) gets the same, and relists.
    support::eventually("a relist after the 410", || {
        lists_of(&server, "services") > lists
    })
    .await;
    api.create(&PostParams::default(), &service("two"))
        .await
        .unwrap();
    api.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    let truth = || async {
        let mut items: Vec<(String, String)> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|s| {
                (
                    s.metadata.name.unwrap(),
                    s.metadata.resource_version.unwrap(),
                )
            })
            .collect();
        items.sort();
        items
    };
    let expected = truth().await;
    let store = |reader: &reflector::Store<Service>| {
        let mut items: Vec<(String, String)> = reader
            .state()
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone().unwrap(),
                    s.metadata.resource_version.clone().unwrap(),
                )
            })
            .collect();
        items.sort();
        items
    };
    support::eventually("the reflector store to equal the server", || {
        store(&reader) == expected
    })
    .await;
    task.abort();

    // A continue token from before a compaction is expired too.
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page
        .metadata
        .continue_
        .clone()
        .unwrap_or_else(|| panic!("no continue token: {page:?}"));
    compact_now(&etcd.endpoint()).await;
    let expired = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap_err();
    match expired {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn the_memory_store_expires_revisions_older_than_its_history() {
    let server = ApiServer::start(Backend::Memory, &["--watch-history", "5"]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let first = api
        .create(&PostParams::default(), &service("m0"))
        .await
        .unwrap();
    for i in 1..10 {
        let labels: BTreeMap<String, String> = BTreeMap::from([("i".into(), i.to_string())]);
        api.patch(
            "m0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap();
    }
    let path = format!(
        "/api/v1/namespaces/default/services?watch=true&resourceVersion={}",
        rv(&first)
    );
    let (status, body) = support::http(server.port, "GET", &path, &[], None).unwrap();
    assert_eq!(status, 200);
    let line: serde_json::Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(
        (line["type"].as_str(), line["object"]["code"].as_u64()),
        (Some("ERROR"), Some(410))
    );
    // A recent revision still works: the watch replays what followed it.
    let recent = rv(&api.get("m0").await.unwrap()) - 2;
    let path = format!(
        "/api/v1/namespaces/default/services?watch=true&resourceVersion={recent}&timeoutSeconds=1"
    );
    let (_, body) = support::http(server.port, "GET", &path, &[], None).unwrap();
    let types: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, ["MODIFIED", "MODIFIED"]);
    // A revision this store never reached (a client from before a restart) is expired too,
    // so the client relists instead of waiting for revisions that mean something else here.
    let path = "/api/v1/namespaces/default/services?watch=true&resourceVersion=999999";
    let (status, body) = support::http(server.port, "GET", path, &[], None).unwrap();
    assert_eq!(status, 200);
    let line: serde_json::Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(line["type"], "ERROR");
    assert_eq!(line["object"]["code"], 410);
    assert!(
        line["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too large resource version: 999999"),
        "{line}"
    );
}
