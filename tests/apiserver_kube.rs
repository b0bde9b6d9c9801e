//! `svcplane apiserver` driven by kube-rs over real HTTP, once on memory storage and once on a
//! real etcd: CRUD of every resource, optimistic concurrency, the patch types, status
//! subresources, finalizers, selectors, pagination, watches, kube-runtime's watcher, reflector
//! and controller (checks 15-29 and 31 of the API server spec, bar the Lease lock).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as NewEvent;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{reflector, watcher};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::{ApiServer, Backend};

fn rv<K: kube::Resource>(object: &K) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

fn service(name: &str, labels: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Creates, reads, lists, replaces and deletes one object through `api`.
async fn round_trip<K>(api: Api<K>, object: Value)
where
    K: kube::Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + serde::Serialize,
{
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    let typed: K = serde_json::from_value(object).unwrap();
    let created = api.create(&PostParams::default(), &typed).await.unwrap();
    assert!(created.meta().uid.is_some(), "{name}: no uid");
    assert!(
        created.meta().creation_timestamp.is_some(),
        "{name}: no creationTimestamp"
    );
    let got = api.get(&name).await.unwrap();
    assert_eq!(got.meta().uid, created.meta().uid);
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|o| o.meta().name.as_deref() == Some(&name)),
        "{name}: not listed"
    );
    let mut changed = got.clone();
    changed.meta_mut().labels = Some(BTreeMap::from([("changed".to_string(), "yes".to_string())]));
    let replaced = api
        .replace(&name, &PostParams::default(), &changed)
        .await
        .unwrap();
    assert!(
        rv(&replaced) > rv(&got),
        "{name}: replace did not bump the resourceVersion"
    );
    assert_eq!(replaced.meta().labels.as_ref().unwrap()["changed"], "yes");
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    // Namespaces terminate in the background; everything else goes at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while api.get_opt(&name).await.unwrap().is_some() {
        assert!(
            <K as k8s_openapi::Resource>::KIND == "Namespace"
                && std::time::Instant::now() < deadline,
            "{name}: still there after delete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_resource_round_trips(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let client = server.client().await;
    round_trip(
        Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": "crud"}}),
    )
    .await;
    round_trip(
        Api::<Service>::default_namespaced(client.clone()),
        serde_json::to_value(service("crud", json!({}))).unwrap(),
    )
    .await;
    round_trip(
        Api::<Endpoints>::default_namespaced(client.clone()),
        json!({"metadata": {"name": "crud"}, "subsets": [{"addresses": [{"ip": "10.1.0.1"}], "ports": [{"port": 80}]}]}),
    )
    .await;
    round_trip(
        Api::<Pod>::default_namespaced(client.clone()),
        json!({"metadata": {"name": "crud"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
    )
    .await;
    round_trip(
        Api::<Node>::all(client.clone()),
        json!({"metadata": {"name": "crud"}}),
    )
    .await;
    round_trip(
        Api::<Event>::default_namespaced(client.clone()),
        json!({"metadata": {"name": "crud.1"}, "involvedObject": {"kind": "Pod", "name": "crud"}, "reason": "Test", "message": "hello"}),
    )
    .await;
    round_trip(
        Api::<EndpointSlice>::default_namespaced(client.clone()),
        json!({"metadata": {"name": "crud-abc"}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.1"]}], "ports": [{"port": 80}]}),
    )
    .await;
    round_trip(
        Api::<Lease>::default_namespaced(client.clone()),
        json!({"metadata": {"name": "crud"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}}),
    )
    .await;
    round_trip(
        Api::<NewEvent>::default_namespaced(client.clone()),
        json!({"metadata": {"name": "crud.2"}, "eventTime": "2026-11-22T03:00:00.000000Z", "reportingController": "svcplane/test",
               "reportingInstance": "t", "action": "Testing", "reason": "Test", "type": "Normal", "regarding": {"kind": "Pod", "name": "crud"}}),
    )
    .await;
}

async fn services_get_list_and_select(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    api.create(
        &PostParams::default(),
        &service("a", json!({"tier": "front"})),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &service("b", json!({"tier": "back"})),
    )
    .await
    .unwrap();
    let a = api.get("a").await.unwrap();
    let spec = a.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    assert_eq!(
        spec.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP")
    );
    assert!(api.get_opt("missing").await.unwrap().is_none());
    let front = api
        .list(&ListParams::default().labels("tier=front"))
        .await
        .unwrap();
    assert_eq!(
        front
            .items
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["a"]
    );
    let set = api
        .list(&ListParams::default().labels("tier in (front,back),tier!=front"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 1);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(
        by_name
            .items
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert!(
        !by_name
            .metadata
            .resource_version
            .unwrap_or_default()
            .is_empty()
    );
    let all = Api::<Service>::all(server.client().await)
        .list(&ListParams::default().fields("metadata.namespace=default"))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
    let bad = api
        .list(&ListParams::default().fields("spec.foo=x"))
        .await
        .unwrap_err();
    let status = api_error(bad);
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    assert_eq!(status.message, "field label not supported: spec.foo");
}

async fn conflicts_and_duplicates_carry_their_reasons(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let created = api
        .create(&PostParams::default(), &service("c", json!({})))
        .await
        .unwrap();
    let duplicate = api_error(
        api.create(&PostParams::default(), &service("c", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(duplicate.reason, "AlreadyExists");
    assert_eq!(duplicate.message, "services \"c\" already exists");
    let mut fresh = created.clone();
    fresh.metadata.labels = Some(BTreeMap::from([("v".into(), "1".into())]));
    api.replace("c", &PostParams::default(), &fresh)
        .await
        .unwrap();
    let mut stale = created.clone();
    stale.metadata.labels = Some(BTreeMap::from([("v".into(), "2".into())]));
    let conflict = api_error(
        api.replace("c", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert!(conflict.is_conflict());
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on services \"c\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(
        api.get("c").await.unwrap().metadata.labels.unwrap()["v"],
        "1"
    );
}

async fn every_patch_type_applies_and_apply_is_refused(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let pp = PatchParams::default();
    let created = api
        .create(&PostParams::default(), &service("p", json!({"keep": "me"})))
        .await
        .unwrap();
    let merged = api
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"added": "1", "keep": null}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.metadata.labels.clone().unwrap(),
        BTreeMap::from([("added".to_string(), "1".to_string())])
    );
    let ops: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/metadata/finalizers", "value": ["test/f"]}]),
    )
    .unwrap();
    let patched = api.patch("p", &pp, &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(
        patched.metadata.finalizers,
        Some(vec!["test/f".to_string()])
    );
    // A failed `test` op, as kube-runtime's finalizer helper sends, writes nothing.
    let failing: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": ["other"]},
        {"op": "remove", "path": "/metadata/finalizers"}]))
    .unwrap();
    let refused = api_error(
        api.patch("p", &pp, &Patch::Json::<()>(failing))
            .await
            .unwrap_err(),
    );
    assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));
    let after = api.get("p").await.unwrap();
    assert_eq!(
        rv(&after),
        rv(&patched),
        "a failed JSON patch must not write"
    );
    let strategic = api
        .patch(
            "p",
            &pp,
            &Patch::Strategic(json!({"spec": {"ports": [{"name": "https", "port": 443}]}})),
        )
        .await
        .unwrap();
    let ports: Vec<i32> = strategic
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(
        ports,
        [80, 443],
        "strategic merge merges ports by port number"
    );
    let apply = api_error(
        api.patch(
            "p",
            &PatchParams::apply("test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service"})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (apply.code, apply.reason.as_str()),
        (415, "UnsupportedMediaType")
    );
    // A patch naming an old resourceVersion is a conflict, as client-go's optimistic patches expect.
    let stale = api_error(
        api.patch("p", &pp, &Patch::Merge(json!({"metadata": {"resourceVersion": rv(&created).to_string(), "labels": {"x": "y"}}})))
            .await
            .unwrap_err(),
    );
    assert!(stale.is_conflict());
}

async fn status_writes_change_only_status(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let created = api
        .create(&PostParams::default(), &service("s", json!({})))
        .await
        .unwrap();
    let ingress = json!({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}, "metadata": {"labels": {"ignored": "yes"}}});
    let patched = api
        .patch_status("s", &PatchParams::default(), &Patch::Merge(ingress))
        .await
        .unwrap();
    assert!(rv(&patched) > rv(&created));
    assert_eq!(
        patched
            .status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("1.2.3.4")
    );
    assert!(
        patched
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .is_empty(),
        "status writes ignore metadata"
    );
    let mut replaced = patched.clone();
    replaced.status.as_mut().unwrap().load_balancer = Some(Default::default());
    replaced.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    let after = api
        .replace_status("s", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert!(
        after
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_none()
    );
    assert_eq!(
        after.spec.as_ref().unwrap().session_affinity.as_deref(),
        Some("None"),
        "status writes ignore spec"
    );
    // The main resource ignores status.
    let mut main = api.get("s").await.unwrap();
    main.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}]}})).unwrap(),
    );
    main.metadata.labels = Some(BTreeMap::from([("main".into(), "yes".into())]));
    let main = api
        .replace("s", &PostParams::default(), &main)
        .await
        .unwrap();
    assert!(
        main.status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_none()
    );
}

async fn finalizers_hold_a_deleted_object_until_removed(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let mut svc = service("f", json!({}));
    svc.metadata.finalizers = Some(vec!["test/hold".into()]);
    api.create(&PostParams::default(), &svc).await.unwrap();
    let deleted = api.delete("f", &DeleteParams::default()).await.unwrap();
    let held = deleted
        .left()
        .expect("an object with finalizers comes back");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        api.get("f")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let more = api_error(
        api.patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["test/hold", "test/more"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(more.reason, "Invalid");
    assert!(
        more.message
            .contains("no new finalizers can be added if the object is being deleted"),
        "{}",
        more.message
    );
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        api.get_opt("f").await.unwrap().is_none(),
        "removing the last finalizer deletes the object"
    );
    // Preconditions.
    let created = api
        .create(&PostParams::default(), &service("g", json!({})))
        .await
        .unwrap();
    let wrong = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert!(api_error(api.delete("g", &wrong).await.unwrap_err()).is_conflict());
    let right = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    api.delete("g", &right).await.unwrap();
}

async fn pages_stay_consistent_under_concurrent_writes(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    for i in 0..5 {
        api.create(
            &PostParams::default(),
            &service(&format!("page-{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    let mut names = Vec::new();
    let mut revisions = Vec::new();
    let mut params = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        for item in &page.items {
            names.push(item.metadata.name.clone().unwrap());
            revisions.push(rv(item));
        }
        // Writes between pages: a new object, a change and a delete.
        api.create(
            &PostParams::default(),
            &service(&format!("late-{pages}"), json!({})),
        )
        .await
        .unwrap();
        api.patch(
            "page-4",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"p": pages.to_string()}}})),
        )
        .await
        .unwrap();
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => {
                params = ListParams::default().limit(2).continue_token(&token)
            }
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        names,
        ["page-0", "page-1", "page-2", "page-3", "page-4"],
        "one consistent snapshot"
    );
    let first_rv = revisions[0];
    assert!(
        revisions.iter().all(|r| *r <= first_rv + 10),
        "no page saw a later write: {revisions:?}"
    );
    let page4 = revisions[4];
    let now = rv(&api.get("page-4").await.unwrap());
    assert!(page4 < now, "page 3 shows page-4 as of the first page");
}

async fn a_watcher_sees_init_then_changes_in_revision_order(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    api.create(&PostParams::default(), &service("w0", json!({})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &service("w1", json!({})))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(
        events.try_next().await.unwrap(),
        Some(watcher::Event::Init)
    ));
    let mut initial = Vec::new();
    loop {
        match events.try_next().await.unwrap().unwrap() {
            watcher::Event::InitApply(s) => initial.push(s.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(initial, ["w0", "w1"]);
    let created = api
        .create(&PostParams::default(), &service("w2", json!({})))
        .await
        .unwrap();
    api.patch(
        "w2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    api.delete("w2", &DeleteParams::default()).await.unwrap();
    let mut last = 0;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let (kind, object) = match event {
            watcher::Event::Apply(s) => ("apply", s),
            watcher::Event::Delete(s) => ("delete", s),
            other => panic!("unexpected {other:?}"),
        };
        assert!(rv(&object) > last, "revisions strictly increase");
        last = rv(&object);
        seen.push(kind);
    }
    assert_eq!(seen, ["apply", "apply", "delete"]);
    assert!(
        last > rv(&created) + 1,
        "the DELETED event carries the deletion revision"
    );
}

async fn a_label_selector_watch_sees_objects_leave_and_return(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let created = api
        .create(&PostParams::default(), &service("l", json!({"app": "a"})))
        .await
        .unwrap();
    let wp = WatchParams::default().labels("app=a").timeout(30);
    let mut stream = api
        .watch(&wp, &created.metadata.resource_version.clone().unwrap())
        .await
        .unwrap()
        .boxed();
    let relabel = |value: &str| Patch::Merge(json!({"metadata": {"labels": {"app": value}}}));
    api.patch("l", &PatchParams::default(), &relabel("b"))
        .await
        .unwrap();
    api.patch("l", &PatchParams::default(), &relabel("c"))
        .await
        .unwrap();
    api.patch("l", &PatchParams::default(), &relabel("a"))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(20), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(s) => {
                kinds.push(("ADDED", s.metadata.labels.unwrap()["app"].clone()))
            }
            WatchEvent::Deleted(s) => {
                kinds.push(("DELETED", s.metadata.labels.unwrap()["app"].clone()))
            }
            WatchEvent::Modified(_) => kinds.push(("MODIFIED", String::new())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(
        kinds,
        [("DELETED", "b".to_string()), ("ADDED", "a".to_string())]
    );
}

async fn a_zero_revision_watch_starts_with_the_current_state(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    api.create(&PostParams::default(), &service("z", json!({})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &service("other", json!({})))
        .await
        .unwrap();
    let wp = WatchParams::default().fields("metadata.name=z").timeout(30);
    let mut stream = api.watch(&wp, "0").await.unwrap().boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(s) => assert_eq!(s.metadata.name.as_deref(), Some("z")),
        other => panic!("expected the synthetic ADDED, got {other:?}"),
    }
    api.patch(
        "z",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"n": "1"}}})),
    )
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(20), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Modified(s) => assert_eq!(s.metadata.labels.unwrap()["n"], "1"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
}

async fn a_watch_ends_at_its_timeout_with_a_bookmark_and_the_watcher_resumes_without_a_relist(
    backend: Backend,
) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    api.create(&PostParams::default(), &service("t", json!({})))
        .await
        .unwrap();
    // Raw watch: bookmarks arrive, the last one before the close, at or after the last event.
    let list = api.list(&ListParams::default()).await.unwrap();
    let wp = WatchParams::default().timeout(3);
    let started = std::time::Instant::now();
    let mut stream = api
        .watch(&wp, &list.metadata.resource_version.unwrap())
        .await
        .unwrap()
        .boxed();
    api.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"b": "1"}}})),
    )
    .await
    .unwrap();
    let mut last_event = 0;
    let mut bookmarks = Vec::new();
    while let Some(event) = stream.try_next().await.unwrap() {
        match event {
            WatchEvent::Modified(s) => last_event = rv(&s),
            WatchEvent::Bookmark(b) => {
                bookmarks.push(b.metadata.resource_version.parse::<u64>().unwrap())
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "closed after {took:?}"
    );
    assert!(last_event > 0);
    assert!(
        !bookmarks.is_empty() && *bookmarks.last().unwrap() >= last_event,
        "bookmarks {bookmarks:?} vs {last_event}"
    );
    // kube-runtime's watcher and reflector across two server-side timeouts.
    let (reader, writer) = reflector::store::<Service>();
    let watching = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().timeout(2)),
    );
    let task = tokio::spawn(watching.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    let lists_before = server
        .audit()
        .iter()
        .filter(|a| a["verb"] == "list" && a["resource"] == "services")
        .count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    api.create(&PostParams::default(), &service("after-timeout", json!({})))
        .await
        .unwrap();
    api.delete("t", &DeleteParams::default()).await.unwrap();
    let expected = |reader: &reflector::Store<Service>| {
        let mut names: Vec<String> = reader
            .state()
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names == ["after-timeout"]
    };
    support::eventually("the reflector to follow", || expected(&reader)).await;
    let audit = server.audit();
    let lists_after = audit
        .iter()
        .filter(|a| a["verb"] == "list" && a["resource"] == "services")
        .count();
    let watches = audit
        .iter()
        .filter(|a| a["verb"] == "watch" && a["resource"] == "services")
        .count();
    assert_eq!(
        lists_before, lists_after,
        "the watcher resumed without a relist"
    );
    assert!(
        watches >= 3,
        "the watcher re-watched after each timeout ({watches} watches)"
    );
    task.abort();
}

async fn streaming_lists_finish_with_the_initial_events_bookmark(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    for i in 0..3 {
        api.create(
            &PostParams::default(),
            &service(&format!("s{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Init => {}
            watcher::Event::InitApply(_) => initial += 1,
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, 3);
    api.create(&PostParams::default(), &service("s3", json!({})))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(20), events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(s) => assert_eq!(s.metadata.name.as_deref(), Some("s3")),
        other => panic!("unexpected {other:?}"),
    }
    let audit = server.audit();
    assert!(
        !audit
            .iter()
            .any(|a| a["verb"] == "list" && a["resource"] == "services"),
        "no list request was needed"
    );
}

async fn a_controller_reconciles_on_create_and_on_owned_changes(backend: Backend) {
    use kube::runtime::controller::{Action, Controller};
    let server = ApiServer::start(backend, &[]);
    let client = server.client().await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reconciled = count.clone();
    let controller = Controller::new(services.clone(), watcher::Config::default())
        .owns(slices.clone(), watcher::Config::default())
        .run(
            move |svc: Arc<Service>, _ctx: Arc<()>| {
                let count = reconciled.clone();
                async move {
                    let _ = svc;
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, kube::Error>(Action::await_change())
                }
            },
            |_, _: &kube::Error, _| Action::requeue(Duration::from_secs(1)),
            Arc::new(()),
        );
    let task = tokio::spawn(controller.for_each(|_| async {}));
    let created = services
        .create(&PostParams::default(), &service("ctl", json!({})))
        .await
        .unwrap();
    let load = || count.load(std::sync::atomic::Ordering::SeqCst);
    support::eventually("a reconcile on create", || load() >= 1).await;
    let before = load();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "ctl-x", "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "ctl",
            "uid": created.metadata.uid.clone().unwrap(), "controller": true}]},
        "addressType": "IPv4", "endpoints": [], "ports": [{"port": 80}]})).unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    support::eventually("a reconcile for the owned slice", || load() > before).await;
    let before = load();
    slices
        .patch(
            "ctl-x",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"edited": "by-hand"}}})),
        )
        .await
        .unwrap();
    support::eventually("a reconcile after a hand edit", || load() > before).await;
    task.abort();
}

async fn revisions_increase_across_resources_in_write_order(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let client = server.client().await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let mut revisions = Vec::new();
    for i in 0..3 {
        revisions.push(rv(&services
            .create(
                &PostParams::default(),
                &service(&format!("m{i}"), json!({})),
            )
            .await
            .unwrap()));
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("m{i}")}, "spec": {"containers": [{"name": "c", "image": "x"}]}})).unwrap();
        revisions.push(rv(&pods
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()));
        let lease: Lease =
            serde_json::from_value(json!({"metadata": {"name": format!("m{i}")}, "spec": {}}))
                .unwrap();
        revisions.push(rv(&leases
            .create(&PostParams::default(), &lease)
            .await
            .unwrap()));
    }
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
}

async fn generated_names_are_unique_under_concurrency(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let creates = (0..50).map(|_| {
        let api = api.clone();
        async move {
            let mut svc = service("", json!({}));
            svc.metadata.name = None;
            svc.metadata.generate_name = Some("web-".into());
            api.create(&PostParams::default(), &svc)
                .await
                .unwrap()
                .metadata
                .name
                .unwrap()
        }
    });
    let mut names = futures::future::join_all(creates).await;
    assert!(
        names.iter().all(|n| n.len() == 9 && n.starts_with("web-")),
        "{names:?}"
    );
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 50);
}

async fn namespaces_gate_creates_and_take_their_objects_with_them(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let client = server.client().await;
    let missing = api_error(
        Api::<Service>::namespaced(client.clone(), "nope")
            .create(&PostParams::default(), &service("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "namespaces \"nope\" not found");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let inside: Api<Service> = Api::namespaced(client.clone(), "doomed");
    inside
        .create(&PostParams::default(), &service("x", json!({})))
        .await
        .unwrap();
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let refused = api_error(
        inside
            .create(&PostParams::default(), &service("y", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    let gone = async {
        loop {
            if namespaces.get_opt("doomed").await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), gone)
        .await
        .expect("the namespace goes away");
    assert!(
        inside
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn dry_runs_and_delete_collection(backend: Backend) {
    let server = ApiServer::start(backend, &[]);
    let api: Api<Service> = Api::default_namespaced(server.client().await);
    let dry = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &service("dry", json!({})),
        )
        .await
        .unwrap();
    assert_eq!(dry.metadata.name.as_deref(), Some("dry"));
    assert!(
        api.get_opt("dry").await.unwrap().is_none(),
        "a dry run is never persisted"
    );
    for name in ["dc-1", "dc-2", "keep"] {
        let labels = if name == "keep" {
            json!({})
        } else {
            json!({"group": "dc"})
        };
        api.create(&PostParams::default(), &service(name, labels))
            .await
            .unwrap();
    }
    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("group=dc"),
        )
        .await
        .unwrap();
    let deleted = deleted.left().expect("a list of what was deleted");
    assert_eq!(deleted.items.len(), 2);
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["keep"]);
}

async fn kube_runtimes_event_recorder_creates_a_series_seen_by_both_event_apis(backend: Backend) {
    use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
    let server = ApiServer::start(backend, &[]);
    let client = server.client().await;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let svc = services
        .create(&PostParams::default(), &service("noted", json!({})))
        .await
        .unwrap();
    let reporter = Reporter {
        controller: "svcplane-test".into(),
        instance: None,
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let note = Note {
        type_: EventType::Normal,
        reason: "Allocated".into(),
        note: Some("a test event".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    let reference = kube::Resource::object_ref(&svc, &());
    recorder.publish(&note, &reference).await.unwrap();
    recorder.publish(&note, &reference).await.unwrap();
    let events: Api<NewEvent> = Api::default_namespaced(client);
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        listed.len(),
        1,
        "the second publish updates the first event"
    );
    let event = &listed[0];
    assert_eq!(event.reason.as_deref(), Some("Allocated"));
    assert_eq!(
        event.regarding.as_ref().unwrap().name.as_deref(),
        Some("noted")
    );
    assert_eq!(event.series.as_ref().unwrap().count, 2);
    // One store: the core API sees the same event under its own field names, and
    // `kubectl describe` shows it.
    let core: Api<k8s_openapi::api::core::v1::Event> =
        Api::default_namespaced(server.client().await);
    let seen = core.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].message.as_deref(), Some("a test event"));
    assert_eq!(seen[0].involved_object.name.as_deref(), Some("noted"));
    assert_eq!(
        seen[0].reporting_component.as_deref(),
        Some("svcplane-test")
    );
    let by_field = core
        .list(&ListParams::default().fields("involvedObject.name=noted"))
        .await
        .unwrap()
        .items;
    assert_eq!(by_field.len(), 1);
    let described = server.kubectl(&["describe", "service", "noted"]);
    let text = String::from_utf8_lossy(&described.stdout).to_string();
    assert!(
        text.contains("Allocated") && text.contains("a test event"),
        "{text}"
    );
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Memory).await })*
        }
        mod etcd {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Etcd).await })*
        }
    };
}

on_both_backends!(
    every_resource_round_trips,
    services_get_list_and_select,
    conflicts_and_duplicates_carry_their_reasons,
    every_patch_type_applies_and_apply_is_refused,
    status_writes_change_only_status,
    finalizers_hold_a_deleted_object_until_removed,
    pages_stay_consistent_under_concurrent_writes,
    a_watcher_sees_init_then_changes_in_revision_order,
    a_label_selector_watch_sees_objects_leave_and_return,
    a_zero_revision_watch_starts_with_the_current_state,
    a_watch_ends_at_its_timeout_with_a_bookmark_and_the_watcher_resumes_without_a_relist,
    streaming_lists_finish_with_the_initial_events_bookmark,
    a_controller_reconciles_on_create_and_on_owned_changes,
    revisions_increase_across_resources_in_write_order,
    generated_names_are_unique_under_concurrency,
    namespaces_gate_creates_and_take_their_objects_with_them,
    dry_runs_and_delete_collection,
    kube_runtimes_event_recorder_creates_a_series_seen_by_both_event_apis,
);
