//! The Endpoints and EndpointSlice reconcilers of `svcplane controller`, each shaped
//! reconcile / error_policy / Context over the queues of [`crate::runtime`] and the stores of
//! `cache::follow`: a sync reads its stores, asks [`crate::endpoints::decide`] or
//! [`crate::endpointslices::plan`] what to write, and writes it with resourceVersion
//! preconditions (create, replace, delete; never server-side apply). A tracker of its own writes refuses to act on a store that has not yet
//! seen them, so a stale cache never creates duplicate slices or undoes its own work.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache::follow::{LeanStore, Source};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, ResourceExt};

use crate::endpoints::{self, Decision};
use crate::endpointslices::{self, LABEL_MANAGED_BY, LABEL_SERVICE_NAME};
use crate::mirroring;
use crate::runtime::{Key, Queue};
use crate::slice_tracker::SliceTracker;
use crate::trigger_time::TriggerTimes;
use crate::{Error, Result, views};

/// The controllers' settings, as kube-controller-manager's flags name them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--concurrent-service-endpoint-syncs`: workers per controller.
    pub concurrent_syncs: usize,
    /// `--endpoint-updates-batch-period`: how long pod changes wait before an Endpoints sync.
    pub endpoint_batch_period: Duration,
    /// `--endpointslice-updates-batch-period`: the same for EndpointSlice syncs.
    pub endpointslice_batch_period: Duration,
    /// `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
    /// The longest back-off of a failing sync.
    pub max_backoff: Duration,
    /// `--mirroring-max-endpoints-per-subset`: addresses mirrored per Endpoints subset.
    pub mirroring_max_endpoints_per_subset: usize,
    /// The managed-by value of the slices written (upstream's in `--manage=all`).
    pub controller_name: String,
}

impl Default for Settings {
    /// kube-controller-manager's defaults, with its managed-by value.
    fn default() -> Settings {
        Settings {
            concurrent_syncs: 5,
            endpoint_batch_period: Duration::ZERO,
            endpointslice_batch_period: Duration::ZERO,
            max_endpoints_per_slice: 100,
            max_backoff: Duration::from_secs(100),
            mirroring_max_endpoints_per_subset: 1000,
            controller_name: endpointslices::UPSTREAM_CONTROLLER.to_string(),
        }
    }
}

/// What the reconcilers share.
pub struct Context {
    client: Client,
    services: LeanStore<views::ServiceRecord>,
    /// Pods and nodes as lean records, converted at the watch boundary.
    pods: LeanStore<views::PodRecord>,
    nodes: LeanStore<views::NodeRecord>,
    /// Endpoints and EndpointSlices whole: writes start from the stored objects.
    endpoints: LeanStore<Endpoints>,
    slices: LeanStore<EndpointSlice>,
    endpoints_triggers: TriggerTimes,
    slice_triggers: TriggerTimes,
    /// Per Endpoints key, the resourceVersion this controller last replaced.
    replaced: Mutex<HashMap<Key, String>>,
    /// The slices this controller wrote, for the stale-cache guard.
    tracker: Arc<SliceTracker>,
    /// The same for the mirroring controller's slices.
    mirror_tracker: Arc<SliceTracker>,
    /// Events as kube-controller-manager's three controllers report them.
    endpoints_events: Recorder,
    slice_events: Recorder,
    mirror_events: Recorder,
    settings: Settings,
}

/// A recorder reporting as `controller` (upstream's event source component).
fn recorder(client: &Client, controller: &str) -> Recorder {
    let instance = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "svcplane".to_string());
    Recorder::new(
        client.clone(),
        Reporter {
            controller: controller.to_string(),
            instance: Some(instance),
        },
    )
}

/// Records a Warning event about `regarding`; a failure to record is only logged.
async fn warn(recorder: &Recorder, regarding: ObjectReference, reason: &str, note: String) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(note),
        action: "Sync".to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &regarding).await {
        tracing::debug!(reason, error = %e, "cannot record an event");
    }
}

/// A reference to the object `kind` `namespace/name`, with its UID when known.
fn reference(kind: &str, api_version: &str, meta: &kube::api::ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.to_string()),
        kind: Some(kind.to_string()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// The message of an API error as kube-apiserver wrote it, or the error itself.
fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn key_of(meta: &kube::api::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The Services of `pod`'s namespace that select it.
fn services_selecting(
    services: &LeanStore<views::ServiceRecord>,
    pod: &views::PodRecord,
) -> Vec<Key> {
    services
        .in_namespace(&pod.view.namespace)
        .iter()
        .map(|s| &s.slice.service)
        .filter(|s| {
            s.selector
                .as_ref()
                .is_some_and(|selector| endpoints::selects(selector, &pod.view.labels))
        })
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect()
}

/// The key of a Service record.
fn service_key(svc: &views::ServiceRecord) -> Key {
    (
        svc.slice.service.namespace.clone(),
        svc.slice.service.name.clone(),
    )
}

/// Runs both reconcilers until the process ends: starts the watches, waits for every store's
/// first list, queues every Service and every Endpoints object (so Endpoints of Services
/// deleted while nothing ran are removed, as upstream's start-up sweep does), and runs the
/// workers. `ready` is told once the stores have synced.
pub async fn run(
    client: Client,
    settings: Settings,
    ready: tokio::sync::watch::Sender<bool>,
) -> Result<()> {
    run_with(client, settings, ready, cache::kube_feed::Shared::default()).await
}

/// [`run`], reading Services and EndpointSlices from the watches of `shared` where given (in
/// `svcplane dev`, the ones the DNS cache reads too).
pub async fn run_with(
    client: Client,
    settings: Settings,
    ready: tokio::sync::watch::Sender<bool>,
    mut shared: cache::kube_feed::Shared,
) -> Result<()> {
    let service_source = shared
        .services
        .take()
        .unwrap_or_else(|| Source::Api(Box::new(Api::all(client.clone()))));
    let slice_source = shared
        .endpoint_slices
        .take()
        .unwrap_or_else(|| Source::Api(Box::new(Api::all(client.clone()))));
    let endpoints_queue = Queue::default();
    let slices_queue = Queue::default();
    let mirror_queue = Queue::default();
    let (services, services_task) = {
        let (eq, sq, mq) = (
            endpoints_queue.clone(),
            slices_queue.clone(),
            mirror_queue.clone(),
        );
        cache::follow::follow(service_source, views::service_record, move |old, new| {
            if let Some(svc) = new.or(old) {
                eq.add(service_key(svc));
                sq.add(service_key(svc));
                mq.add(service_key(svc));
            }
        })
    };
    let (pods, pods_task) = {
        let (eq, sq, services) = (
            endpoints_queue.clone(),
            slices_queue.clone(),
            services.clone(),
        );
        let (eb, sb) = (
            settings.endpoint_batch_period,
            settings.endpointslice_batch_period,
        );
        cache::follow::follow(
            Source::Api(Box::new(Api::<Pod>::all(client.clone()))),
            views::pod_record,
            move |old, new| {
                let mut keys: Vec<Key> = Vec::new();
                for pod in [old, new].into_iter().flatten() {
                    keys.extend(services_selecting(&services, pod));
                }
                keys.sort();
                keys.dedup();
                for key in keys {
                    eq.add_after(key.clone(), eb);
                    sq.add_after(key, sb);
                }
            },
        )
    };
    let (nodes, nodes_task) = {
        let (sq, services) = (slices_queue.clone(), services.clone());
        cache::follow::follow(
            Source::Api(Box::new(Api::<Node>::all(client.clone()))),
            views::node_record,
            move |old, new| {
                // A node's zone feeds its pods' endpoints: resync every Service with a selector.
                let zone = |n: Option<&views::NodeRecord>| n.map(|n| n.zone.clone());
                if zone(old) != zone(new) {
                    for svc in services.state() {
                        sq.add(service_key(&svc));
                    }
                }
            },
        )
    };
    let (endpoints, endpoints_task) = {
        let (eq, mq) = (endpoints_queue.clone(), mirror_queue.clone());
        cache::follow::follow(
            Source::Api(Box::new(Api::<Endpoints>::all(client.clone()))),
            Endpoints::clone,
            move |old, new| {
                if let (Some(gone), None) = (old, new) {
                    eq.add(key_of(&gone.metadata));
                }
                if let Some(ep) = new.or(old) {
                    mq.add(key_of(&ep.metadata));
                }
            },
        )
    };
    let tracker: Arc<SliceTracker> = Arc::default();
    let mirror_tracker: Arc<SliceTracker> = Arc::default();
    let (slices, slices_task) = {
        let (sq, mq, name) = (
            slices_queue.clone(),
            mirror_queue.clone(),
            settings.controller_name.clone(),
        );
        let (tracker, mirror_tracker) = (tracker.clone(), mirror_tracker.clone());
        // As upstream: a change to a slice re-syncs its Service after at least a second.
        let delay = settings
            .endpointslice_batch_period
            .max(Duration::from_secs(1));
        cache::follow::follow(slice_source, EndpointSlice::clone, move |old, new| {
            let mirrored = |s: &EndpointSlice| {
                s.labels().get(LABEL_MANAGED_BY).map(String::as_str)
                    == Some(mirroring::MIRRORING_CONTROLLER)
            };
            let (sq, tracker, name) = match new.or(old) {
                Some(s) if mirrored(s) => (&mq, &mirror_tracker, mirroring::MIRRORING_CONTROLLER),
                _ => (&sq, &tracker, name.as_str()),
            };
            let ours = |s: &EndpointSlice| {
                s.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(name)
            };
            let service = |s: &EndpointSlice| {
                s.labels()
                    .get(LABEL_SERVICE_NAME)
                    .map(|svc| (s.namespace().unwrap_or_default(), svc.clone()))
            };
            match (old, new) {
                (old, Some(new)) => {
                    let moved =
                        old.is_some_and(|o| service(o) != service(new) || ours(o) != ours(new));
                    let changed = ours(new)
                        && service(new).is_some_and(|svc| {
                            tracker.should_sync(
                                &svc,
                                &new.name_any(),
                                new.metadata.generation.unwrap_or_default(),
                            )
                        });
                    if moved || changed {
                        for key in [old.and_then(service), service(new)].into_iter().flatten() {
                            sq.add_after(key, delay);
                        }
                    }
                }
                (Some(gone), None) if ours(gone) => {
                    // A deletion it made is expected; any other (by hand, by someone else)
                    // re-syncs the Service — also for slices written before a restart, which
                    // upstream's tracker does not know and leaves missing.
                    if let Some(svc) = service(gone)
                        && !tracker.handle_deletion(&svc, &gone.name_any())
                    {
                        sq.add_after(svc, delay);
                    }
                }
                _ => {}
            }
        })
    };
    let ended = |what: &str| Error::Config {
        field: what.to_string(),
        message: "the watch ended before its first list".to_string(),
    };
    for (what, synced) in [
        ("services", services.wait_until_ready().await),
        ("endpoints", endpoints.wait_until_ready().await),
        ("endpointslices", slices.wait_until_ready().await),
        ("pods", pods.wait_until_ready().await),
    ] {
        synced.map_err(|_| ended(what))?;
    }
    nodes.wait_until_ready().await.map_err(|_| ended("nodes"))?;
    let _ = ready.send(true);
    let context = Arc::new(Context {
        client: client.clone(),
        services: services.clone(),
        pods,
        nodes,
        endpoints: endpoints.clone(),
        slices,
        endpoints_triggers: TriggerTimes::default(),
        slice_triggers: TriggerTimes::default(),
        replaced: Mutex::default(),
        tracker,
        mirror_tracker,
        endpoints_events: recorder(&client, "endpoint-controller"),
        slice_events: recorder(&client, "endpoint-slice-controller"),
        mirror_events: recorder(&client, "endpoint-slice-mirroring-controller"),
        settings: settings.clone(),
    });
    for svc in services.state() {
        slices_queue.add(service_key(&svc));
        endpoints_queue.add(service_key(&svc));
        mirror_queue.add(service_key(&svc));
    }
    for ep in endpoints.state() {
        let leader = ep
            .annotations()
            .contains_key("control-plane.alpha.kubernetes.io/leader");
        if !leader {
            endpoints_queue.add(key_of(&ep.metadata));
        }
    }
    let mut workers = Vec::new();
    for _ in 0..settings.concurrent_syncs.max(1) {
        workers.push(worker("endpoints", &endpoints_queue, &context, |k, c| {
            Box::pin(reconcile_endpoints(k, c))
        }));
        workers.push(worker("endpointslices", &slices_queue, &context, |k, c| {
            Box::pin(reconcile_slices(k, c))
        }));
        workers.push(worker(
            "endpointslicemirroring",
            &mirror_queue,
            &context,
            |k, c| Box::pin(reconcile_mirroring(k, c)),
        ));
    }
    let tasks = [
        services_task,
        pods_task,
        nodes_task,
        endpoints_task,
        slices_task,
    ];
    let _ = futures::future::select_all(tasks.into_iter().chain(workers)).await;
    Err(Error::Config {
        field: "controller".to_string(),
        message: "a watch or worker ended".to_string(),
    })
}

/// One sync of a key, borrowed from its worker.
type Sync =
    for<'a> fn(
        &'a Key,
        &'a Context,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// A worker of one controller: takes keys from `queue`, syncs them, and applies the error
/// policy to failures.
fn worker(
    controller: &'static str,
    queue: &Queue,
    ctx: &Arc<Context>,
    sync: Sync,
) -> tokio::task::JoinHandle<()> {
    let (queue, ctx) = (queue.clone(), ctx.clone());
    tokio::spawn(async move {
        loop {
            let key = queue.next().await;
            match sync(&key, &ctx).await {
                Ok(()) => queue.forget(&key),
                Err(e) => error_policy(controller, &key, &e, &queue, &ctx),
            }
            queue.done(&key);
        }
    })
}

/// What a failed sync does: logs it and queues the key again after its back-off.
fn error_policy(controller: &str, key: &Key, error: &Error, queue: &Queue, ctx: &Context) {
    let kind = match error {
        Error::Stale(_) => "stale",
        Error::MissingNodes(_) => "missing_nodes",
        Error::Kube(_) => "api",
        _ => "other",
    };
    tracing::warn!(controller, service = %format!("{}/{}", key.0, key.1), kind, error = %error, "sync failed; retrying");
    queue.retry(key.clone(), ctx.settings.max_backoff);
}

fn pods_of(ctx: &Context, namespace: &str) -> Vec<Arc<views::PodRecord>> {
    ctx.pods.in_namespace(namespace)
}

/// The `(name, Ready transition)` of the pods `service` selects, for the trigger time.
fn trigger_inputs(
    service: &endpoints::ServiceView,
    pods: &[Arc<views::PodRecord>],
) -> Vec<(String, Option<String>)> {
    let Some(selector) = &service.selector else {
        return Vec::new();
    };
    pods.iter()
        .filter(|p| endpoints::selects(selector, &p.view.labels))
        .map(|p| (p.view.name.clone(), p.trigger.clone()))
        .collect()
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403
        && s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// One Endpoints sync for a Service key.
pub async fn reconcile_endpoints(key: &Key, ctx: &Context) -> Result<()> {
    let (namespace, name) = key;
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(svc) = ctx.services.get(namespace, name) else {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        ctx.endpoints_triggers.forget(namespace, name);
        ctx.replaced.lock().expect("lock").remove(key);
        return Ok(());
    };
    let view = &svc.slice.service;
    if view.external_name || view.selector.is_none() {
        return Ok(());
    }
    let pods = pods_of(ctx, namespace);
    let current = ctx.endpoints.get(namespace, name);
    if let Some(current) = &current {
        let rv = current.resource_version();
        if rv.is_some() && ctx.replaced.lock().expect("lock").get(key) == rv.as_ref() {
            return Err(Error::Stale(format!(
                "Endpoints {namespace}/{name} at resourceVersion {} was already replaced",
                rv.unwrap_or_default()
            )));
        }
    }
    let trigger = ctx.endpoints_triggers.compute(
        namespace,
        name,
        &svc.created_at,
        &trigger_inputs(view, &pods),
    );
    let refs: Vec<&endpoints::PodView> = pods.iter().map(|p| &p.view).collect();
    let current_view = current.as_deref().map(views::endpoints);
    match endpoints::decide(Some(view), &refs, current_view.as_ref(), trigger.as_deref()) {
        Decision::Nothing => Ok(()),
        Decision::Delete => Ok(()),
        Decision::Create(object) => {
            let object = views::endpoints_to_api(namespace, name, &object, None);
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                Err(e) if namespace_terminating(&e) => Ok(()),
                Err(e) => {
                    let note = format!(
                        "Failed to create endpoint for service {namespace}/{name}: {}",
                        message(&e)
                    );
                    let regarding = reference("Endpoints", "v1", &object.metadata);
                    warn(
                        &ctx.endpoints_events,
                        regarding,
                        "FailedToCreateEndpoint",
                        note,
                    )
                    .await;
                    Err(e.into())
                }
            }
        }
        Decision::Update(object) => {
            let base = current.as_deref();
            let object = views::endpoints_to_api(namespace, name, &object, base);
            let updated = match api.replace(name, &PostParams::default(), &object).await {
                Ok(updated) => updated,
                Err(e) => {
                    let note = format!(
                        "Failed to update endpoint {namespace}/{name}: {}",
                        message(&e)
                    );
                    let regarding = reference("Endpoints", "v1", &object.metadata);
                    warn(
                        &ctx.endpoints_events,
                        regarding,
                        "FailedToUpdateEndpoint",
                        note,
                    )
                    .await;
                    return Err(e.into());
                }
            };
            let old = base.and_then(|b| b.resource_version());
            if updated.resource_version() != old
                && let Some(old) = old
            {
                ctx.replaced.lock().expect("lock").insert(key.clone(), old);
            }
            Ok(())
        }
    }
}

/// One EndpointSlice sync for a Service key.
pub async fn reconcile_slices(key: &Key, ctx: &Context) -> Result<()> {
    let (namespace, name) = key;
    let Some(svc) = ctx.services.get(namespace, name) else {
        // Its slices go by garbage collection (their ownerReference).
        ctx.slice_triggers.forget(namespace, name);
        ctx.tracker.forget(key);
        return Ok(());
    };
    let view = &svc.slice;
    if view.service.external_name || view.service.selector.is_none() {
        return Ok(());
    }
    let existing: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter(|s| {
            let labels = s.labels();
            labels.get(LABEL_SERVICE_NAME) == Some(name)
                && labels.get(LABEL_MANAGED_BY) == Some(&ctx.settings.controller_name)
        })
        .collect();
    // Refuse to act on a cache that has not seen this controller's own writes.
    let seen: Vec<(String, i64)> = existing
        .iter()
        .map(|s| (s.name_any(), s.metadata.generation.unwrap_or_default()))
        .collect();
    if let Some(reason) = ctx.tracker.stale(key, &seen) {
        return Err(Error::Stale(format!(
            "EndpointSlices of {namespace}/{name}: {reason}"
        )));
    }
    let pods = pods_of(ctx, namespace);
    let trigger = ctx.slice_triggers.compute(
        namespace,
        name,
        &svc.created_at,
        &trigger_inputs(&view.service, &pods),
    );
    let refs: Vec<&endpoints::PodView> = pods.iter().map(|p| &p.view).collect();
    let slice_views: Vec<endpointslices::Slice> =
        existing.iter().map(|s| views::slice(s)).collect();
    let zones: BTreeMap<String, String> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| (n.name.clone(), n.zone.clone()))
        .collect();
    let settings = endpointslices::Settings {
        max_endpoints_per_slice: ctx.settings.max_endpoints_per_slice,
        controller_name: &ctx.settings.controller_name,
        prefer_same_traffic_distribution: true,
    };
    let Some(plan) = endpointslices::plan(
        view,
        &refs,
        &slice_views,
        &zones,
        trigger.as_deref(),
        &settings,
    ) else {
        return Ok(());
    };
    let written = write_slices(key, ctx, &svc, &existing, &plan).await;
    if let Err(e) = &written {
        let note = format!(
            "Error updating Endpoint Slices for Service {namespace}/{name}: {}",
            match e {
                Error::Kube(e) => message(e),
                other => other.to_string(),
            }
        );
        let regarding = ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Service".to_string()),
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            uid: Some(svc.slice.uid.clone()),
            resource_version: svc.resource_version.clone(),
            ..ObjectReference::default()
        };
        warn(
            &ctx.slice_events,
            regarding,
            "FailedToUpdateEndpointSlices",
            note,
        )
        .await;
    }
    written
}

/// The writes of a slice plan: creates, updates, deletes, each recorded in the tracker.
async fn write_slices(
    key: &Key,
    ctx: &Context,
    svc: &views::ServiceRecord,
    existing: &[Arc<EndpointSlice>],
    plan: &endpointslices::Plan,
) -> Result<()> {
    let (namespace, name) = key;
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), namespace);
    // Each write is recorded at once, before its watch event can arrive.
    for slice in &plan.create {
        match api
            .create(
                &PostParams::default(),
                &views::slice_to_api(svc, slice, None),
            )
            .await
        {
            Ok(created) => ctx.tracker.wrote(
                key,
                &created.name_any(),
                created.metadata.generation.unwrap_or(1),
            ),
            Err(e) if namespace_terminating(&e) => return Ok(()),
            Err(e) => return Err(Error::from(e)),
        }
    }
    for slice in &plan.update {
        let base = existing.iter().find(|s| s.name_any() == slice.name);
        let object = views::slice_to_api(svc, slice, base.map(|b| b.as_ref()));
        let updated = api
            .replace(&slice.name, &PostParams::default(), &object)
            .await?;
        tracing::debug!(service = %format!("{namespace}/{name}"), slice = %slice.name,
            endpoints = slice.endpoints.len(), "updated an EndpointSlice");
        ctx.tracker.wrote(
            key,
            &updated.name_any(),
            updated.metadata.generation.unwrap_or_default(),
        );
    }
    for slice in &plan.delete {
        match api.delete(slice, &DeleteParams::default()).await {
            Ok(_) => ctx.tracker.deleted(key, slice),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(Error::from(e)),
        }
    }
    if !plan.missing_nodes.is_empty() {
        return Err(Error::MissingNodes(plan.missing_nodes.clone()));
    }
    Ok(())
}

/// One EndpointSlice mirroring sync for an Endpoints key.
pub async fn reconcile_mirroring(key: &Key, ctx: &Context) -> Result<()> {
    let (namespace, name) = key;
    let endpoints = ctx.endpoints.get(namespace, name);
    let service = ctx.services.get(namespace, name);
    let existing: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter(|s| {
            let labels = s.labels();
            labels.get(LABEL_SERVICE_NAME) == Some(name)
                && labels.get(LABEL_MANAGED_BY).map(String::as_str)
                    == Some(mirroring::MIRRORING_CONTROLLER)
        })
        .collect();
    let seen: Vec<(String, i64)> = existing
        .iter()
        .map(|s| (s.name_any(), s.metadata.generation.unwrap_or_default()))
        .collect();
    if let Some(reason) = ctx.mirror_tracker.stale(key, &seen) {
        return Err(Error::Stale(format!(
            "mirrored EndpointSlices of {namespace}/{name}: {reason}"
        )));
    }
    let ep_view = endpoints.as_deref().map(views::mirrored_endpoints);
    let svc_view = service.as_ref().map(|s| s.slice.service.clone());
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), namespace);
    let (Some(ep), true) = (
        endpoints.as_deref(),
        mirroring::mirrored(ep_view.as_ref(), svc_view.as_ref()),
    ) else {
        // Not (or no longer) mirrored: its mirrored slices go.
        for slice in &existing {
            match api
                .delete(&slice.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => ctx.mirror_tracker.deleted(key, &slice.name_any()),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if endpoints.is_none() {
            ctx.mirror_tracker.forget(key);
        }
        return Ok(());
    };
    let slice_views: Vec<endpointslices::Slice> =
        existing.iter().map(|s| views::slice(s)).collect();
    let plan = mirroring::plan(
        ep_view.as_ref().expect("mirrored Endpoints"),
        &slice_views,
        ctx.settings.mirroring_max_endpoints_per_subset,
    );
    if plan.invalid > 0 {
        let note = format!(
            "Skipped {} invalid IP addresses when mirroring to EndpointSlices",
            plan.invalid
        );
        let regarding = reference("Endpoints", "v1", &ep.metadata);
        warn(&ctx.mirror_events, regarding, "InvalidIPAddress", note).await;
    }
    if plan.over_limit > 0 {
        let note = format!(
            "A max of {} addresses can be mirrored to EndpointSlices per Endpoints subset. {} addresses were skipped",
            ctx.settings.mirroring_max_endpoints_per_subset,
            plan.invalid + plan.over_limit
        );
        let regarding = reference("Endpoints", "v1", &ep.metadata);
        warn(
            &ctx.mirror_events,
            regarding,
            "TooManyAddressesToMirror",
            note,
        )
        .await;
    }
    for slice in &plan.create {
        match api
            .create(
                &PostParams::default(),
                &views::mirrored_slice_to_api(ep, slice, None),
            )
            .await
        {
            Ok(created) => ctx.mirror_tracker.wrote(
                key,
                &created.name_any(),
                created.metadata.generation.unwrap_or(1),
            ),
            Err(e) if namespace_terminating(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    for slice in &plan.update {
        let base = existing.iter().find(|s| s.name_any() == slice.name);
        let object = views::mirrored_slice_to_api(ep, slice, base.map(|b| b.as_ref()));
        let updated = api
            .replace(&slice.name, &PostParams::default(), &object)
            .await?;
        ctx.mirror_tracker.wrote(
            key,
            &updated.name_any(),
            updated.metadata.generation.unwrap_or_default(),
        );
    }
    for slice in &plan.delete {
        match api.delete(slice, &DeleteParams::default()).await {
            Ok(_) => ctx.mirror_tracker.deleted(key, slice),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
