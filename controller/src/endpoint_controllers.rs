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

use crate::endpoints::{self, Decision, Selector};
use crate::endpointslices::{self, LABEL_MANAGED_BY, LABEL_SERVICE_NAME};
use crate::metrics::{Metrics, Share};
use crate::mirroring;
use crate::runtime::{Key, Queue};
use crate::slice_tracker::SliceTracker;
use crate::trigger_time::TriggerTimes;
use crate::views::SelectorAnnotation;
use crate::{Error, Result, views};

/// Which Services the controllers manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manage {
    /// Every Service with `spec.selector` (in place of kube-controller-manager's three
    /// controllers, which are then disabled), and those selected by the annotation.
    All,
    /// Only Services without `spec.selector` that carry [`endpoints::ANNOTATION_SELECTOR`],
    /// beside kube-controller-manager; no mirroring.
    Annotated,
}

/// The managed-by value of the EndpointSlices svcplane writes for the annotation.
pub const SVCPLANE_SLICE_CONTROLLER: &str = "endpointslice-controller.svcplane.io";

/// The controllers' settings, as kube-controller-manager's flags name them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which Services to manage.
    pub manage: Manage,
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
    /// The managed-by value of the slices written for `spec.selector` (upstream's).
    pub controller_name: String,
}

impl Settings {
    /// The managed-by value of the slices written for a Service selected by `selector`.
    fn slice_controller(&self, selector: &Selector) -> &str {
        match selector {
            Selector::Spec(_) => &self.controller_name,
            Selector::Annotation(_) => SVCPLANE_SLICE_CONTROLLER,
        }
    }

    /// Whether a slice's managed-by value is one this controller writes in its mode.
    fn writes_slices_as(&self, managed_by: Option<&str>) -> bool {
        managed_by == Some(SVCPLANE_SLICE_CONTROLLER)
            || (self.manage == Manage::All && managed_by == Some(self.controller_name.as_str()))
    }
}

impl Default for Settings {
    /// kube-controller-manager's defaults, with its managed-by value.
    fn default() -> Settings {
        Settings {
            manage: Manage::All,
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
    /// Events about svcplane's own annotation.
    svcplane_events: Recorder,
    metrics: Arc<Metrics>,
    /// The queues, for a Service whose slice event arrived while its writes were in flight
    /// and turned out not to be theirs; and how long a slice event waits (upstream's
    /// max(1 s, batch period)).
    slice_queue: Queue,
    mirror_queue: Queue,
    slice_event_delay: Duration,
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

/// What the process hands the controllers besides the client and settings.
pub struct Hooks {
    /// Told `true` once every store has its first list.
    pub ready: tokio::sync::watch::Sender<bool>,
    /// Watches shared with other parts of the process (the DNS cache in `svcplane dev`).
    pub shared: cache::kube_feed::Shared,
    pub metrics: Arc<Metrics>,
    /// Resolves when this process may write (it holds the leader Lease); the stores fill and
    /// the queues collect keys before.
    pub leading: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Hooks {
    /// Hooks for a process that is always the writer, with nothing shared.
    pub fn solo(ready: tokio::sync::watch::Sender<bool>) -> Hooks {
        Hooks {
            ready,
            shared: cache::kube_feed::Shared::default(),
            metrics: Arc::default(),
            leading: Box::pin(std::future::ready(())),
        }
    }
}

/// Runs the reconcilers until the process ends (or the future is dropped, which stops every
/// task it started): starts the watches, waits for every store's first list, queues every
/// Service and every Endpoints object (so Endpoints of Services deleted while nothing ran
/// are removed, as upstream's start-up sweep does), and once `hooks.leading` resolves runs
/// the workers.
pub async fn run(client: Client, settings: Settings, hooks: Hooks) -> Result<()> {
    let Hooks {
        ready,
        mut shared,
        metrics,
        leading,
    } = hooks;
    let service_source = shared
        .services
        .take()
        .unwrap_or_else(|| Source::Api(Box::new(Api::all(client.clone()))));
    let slice_source = shared
        .endpoint_slices
        .take()
        .unwrap_or_else(|| Source::Api(Box::new(Api::all(client.clone()))));
    let endpoints_queue = Queue::with_metrics(metrics.clone(), "endpoint");
    let slices_queue = Queue::with_metrics(metrics.clone(), "endpoint_slice");
    let mirror_queue = Queue::with_metrics(metrics.clone(), "endpoint_slice_mirroring");
    let (services, services_task) = {
        let (eq, sq, mq) = (
            endpoints_queue.clone(),
            slices_queue.clone(),
            mirror_queue.clone(),
        );
        let manage = settings.manage;
        let convert =
            move |svc: &k8s_openapi::api::core::v1::Service| views::service_record(svc, manage);
        cache::follow::follow(service_source, convert, move |old, new| {
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
        let (sq, mq, settings) = (slices_queue.clone(), mirror_queue.clone(), settings.clone());
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
            let managed_by = |s: &EndpointSlice| s.labels().get(LABEL_MANAGED_BY).cloned();
            let (sq, tracker, mirror) = match new.or(old) {
                Some(s) if mirrored(s) => (&mq, &mirror_tracker, true),
                _ => (&sq, &tracker, false),
            };
            let ours = |s: &EndpointSlice| {
                let by = managed_by(s);
                if mirror {
                    by.as_deref() == Some(mirroring::MIRRORING_CONTROLLER)
                } else {
                    settings.writes_slices_as(by.as_deref())
                }
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
                            tracker.on_event(
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
                        && tracker.on_deletion(&svc, &gone.name_any())
                    {
                        sq.add_after(svc, delay);
                    }
                }
                _ => {}
            }
        })
    };
    // The watches stop when this future is dropped (leadership lost, shutdown).
    let _watches = AbortOnDrop(vec![
        services_task.abort_handle(),
        pods_task.abort_handle(),
        nodes_task.abort_handle(),
        endpoints_task.abort_handle(),
        slices_task.abort_handle(),
    ]);
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
        svcplane_events: recorder(&client, "svcplane-controller"),
        metrics,
        slice_queue: slices_queue.clone(),
        mirror_queue: mirror_queue.clone(),
        slice_event_delay: settings
            .endpointslice_batch_period
            .max(Duration::from_secs(1)),
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
        if !leader && (settings.manage == Manage::All || svcplanes_endpoints(&ep)) {
            endpoints_queue.add(key_of(&ep.metadata));
        }
    }
    // The workers stop with the JoinSet.
    let mut tasks = tokio::task::JoinSet::new();
    for task in [
        services_task,
        pods_task,
        nodes_task,
        endpoints_task,
        slices_task,
    ] {
        tasks.spawn(async move {
            let _ = task.await;
        });
    }
    tokio::select! {
        _ = leading => {}
        _ = tasks.join_next() => return Err(ended("a watch")),
    }
    for _ in 0..settings.concurrent_syncs.max(1) {
        worker(
            &mut tasks,
            "endpoint",
            &endpoints_queue,
            &context,
            |k, c| Box::pin(reconcile_endpoints(k, c)),
        );
        worker(
            &mut tasks,
            "endpoint_slice",
            &slices_queue,
            &context,
            |k, c| Box::pin(reconcile_slices(k, c)),
        );
        if settings.manage == Manage::All {
            worker(
                &mut tasks,
                "endpoint_slice_mirroring",
                &mirror_queue,
                &context,
                |k, c| Box::pin(reconcile_mirroring(k, c)),
            );
        }
    }
    let _ = tasks.join_next().await;
    Err(Error::Config {
        field: "controller".to_string(),
        message: "a watch or worker ended".to_string(),
    })
}

/// Aborts the watch tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// One sync of a key, borrowed from its worker.
type Sync =
    for<'a> fn(
        &'a Key,
        &'a Context,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// A worker of one controller (named as upstream's queue): takes keys from `queue`, syncs
/// each in its own span, counts the EndpointSlice syncs as upstream does, and applies the
/// error policy to failures.
fn worker(
    tasks: &mut tokio::task::JoinSet<()>,
    controller: &'static str,
    queue: &Queue,
    ctx: &Arc<Context>,
    sync: Sync,
) {
    use tracing::Instrument;
    let (queue, ctx) = (queue.clone(), ctx.clone());
    tasks.spawn(async move {
        loop {
            let key = queue.next().await;
            let span =
                tracing::info_span!("reconcile", controller, namespace = %key.0, name = %key.1);
            let started = std::time::Instant::now();
            let result = sync(&key, &ctx).instrument(span.clone()).await;
            span.in_scope(|| {
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    "synced"
                )
            });
            if controller == "endpoint_slice" {
                let label = match &result {
                    Ok(()) => "success",
                    Err(Error::Stale(_)) => "stale",
                    Err(_) => "error",
                };
                ctx.metrics.syncs.inc(&[label]);
            }
            if controller == "endpoint_slice_mirroring" {
                // Upstream observes whole milliseconds.
                let ms = started.elapsed().as_millis() as f64;
                ctx.metrics
                    .mirroring_endpoints_sync_duration
                    .observe(&[], ms / 1000.0);
            }
            match result {
                Ok(()) => queue.forget(&key),
                Err(e) => span.in_scope(|| error_policy(controller, &key, &e, &queue, &ctx)),
            }
            queue.done(&key);
        }
    });
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

/// Writes `object` over `base` (the stored object it was built from) as a JSON Patch from one
/// to the other that also sets the base's resourceVersion, so a stale base gives 409 Conflict
/// exactly as a replace does: the same result as upstream's update, in the bytes of what
/// changed rather than the whole object.
async fn write_over<K>(api: &Api<K>, name: &str, base: &K, object: &K) -> kube::Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let (from, to) = (
        serde_json::to_value(base).map_err(kube::Error::SerdeError)?,
        serde_json::to_value(object).map_err(kube::Error::SerdeError)?,
    );
    let mut ops = json_patch::diff(&from, &to).0;
    if let Some(rv) = base.meta().resource_version.clone() {
        ops.insert(
            0,
            json_patch::PatchOperation::Replace(json_patch::ReplaceOperation {
                path: json_patch::jsonptr::PointerBuf::parse("/metadata/resourceVersion")
                    .expect("a valid pointer"),
                value: serde_json::Value::String(rv),
            }),
        );
    }
    let patch = kube::api::Patch::Json::<()>(json_patch::Patch(ops));
    api.patch(name, &kube::api::PatchParams::default(), &patch)
        .await
}

/// Whether svcplane wrote an Endpoints object for the annotation (its managed-by value).
fn svcplanes_endpoints(ep: &Endpoints) -> bool {
    ep.labels()
        .get(endpoints::LABEL_MANAGED_BY)
        .map(String::as_str)
        == Some(endpoints::SVCPLANE_CONTROLLER_NAME)
}

async fn delete_endpoints(api: &Api<Endpoints>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One Endpoints sync for a Service key.
pub async fn reconcile_endpoints(key: &Key, ctx: &Context) -> Result<()> {
    let (namespace, name) = key;
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), namespace);
    let current = ctx.endpoints.get(namespace, name);
    let Some(svc) = ctx.services.get(namespace, name) else {
        // As upstream, the Endpoints of a gone Service go; beside kube-controller-manager,
        // only those svcplane wrote.
        if ctx.settings.manage == Manage::All || current.as_deref().is_some_and(svcplanes_endpoints)
        {
            delete_endpoints(&api, name).await?;
        }
        ctx.endpoints_triggers.forget(namespace, name);
        ctx.replaced.lock().expect("lock").remove(key);
        return Ok(());
    };
    let view = &svc.slice.service;
    if view.external_name || view.selector.is_none() {
        // What svcplane wrote for an annotation that is gone (or for a Service that became
        // ExternalName) goes; a malformed annotation leaves everything as it is.
        // (Beside kube-controller-manager, a Service that gained `spec.selector` keeps the
        // object: upstream's controller takes it over.)
        let taken_over = svc.spec_selector && !view.external_name;
        let leftover = current.as_deref().is_some_and(svcplanes_endpoints)
            && !matches!(svc.annotation, SelectorAnnotation::Malformed(_))
            && !taken_over;
        if leftover {
            delete_endpoints(&api, name).await?;
        }
        return Ok(());
    }
    let pods = pods_of(ctx, namespace);
    if let Some(current) = &current {
        let rv = current.resource_version();
        if rv.is_some() && ctx.replaced.lock().expect("lock").get(key) == rv.as_ref() {
            return Err(Error::Stale(format!(
                "Endpoints {namespace}/{name} at resourceVersion {} was already replaced",
                rv.unwrap_or_default()
            )));
        }
    }
    let saved = ctx.endpoints_triggers.save(namespace, name);
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
                    ctx.endpoints_triggers.restore(saved);
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
            let written = match base {
                Some(base) => write_over(&api, name, base, &object).await,
                None => api.replace(name, &PostParams::default(), &object).await,
            };
            let updated = match written {
                Ok(updated) => updated,
                Err(e) => {
                    ctx.endpoints_triggers.restore(saved);
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
        ctx.metrics.slice_share(key, None, None);
        ctx.slice_triggers.forget(namespace, name);
        ctx.tracker.forget(key);
        return Ok(());
    };
    let view = &svc.slice;
    annotation_events(ctx, &svc).await;
    let of_service = |managed_by: &str| service_slices(ctx, key, managed_by);
    let Some(selector) = view
        .service
        .selector
        .as_ref()
        .filter(|_| !view.service.external_name)
    else {
        // Slices svcplane wrote for an annotation that is gone go; a malformed annotation
        // leaves everything as it is.
        if !matches!(svc.annotation, SelectorAnnotation::Malformed(_)) {
            delete_slices(ctx, key, &of_service(SVCPLANE_SLICE_CONTROLLER)).await?;
        }
        return Ok(());
    };
    let controller_name = ctx.settings.slice_controller(selector);
    // The other controller's slices of this Service are leftovers of its former selector:
    // upstream's when the annotation took over, svcplane's when `spec.selector` did.
    let leftovers = match selector {
        Selector::Annotation(_) => of_service(&ctx.settings.controller_name),
        Selector::Spec(_) => of_service(SVCPLANE_SLICE_CONTROLLER),
    };
    delete_slices(ctx, key, &leftovers).await?;
    let existing = of_service(controller_name);
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
    let saved = ctx.slice_triggers.save(namespace, name);
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
        controller_name,
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
    record_plan(ctx, key, &plan);
    let written = write_slices(key, ctx, &svc, &existing, &plan).await;
    if written.is_ok() {
        let topology = if plan.topology_annotated {
            "Auto"
        } else {
            "Disabled"
        };
        let traffic = plan.traffic_distribution.as_deref().unwrap_or("");
        let changed = plan.create.len() + plan.update.len() + plan.delete.len();
        ctx.metrics
            .endpointslices_changed_per_sync
            .observe(&[topology, traffic], changed as f64);
    }
    if let Err(e) = &written {
        ctx.slice_triggers.restore(saved);
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

/// Records a plan's counts as upstream's reconciler does before it writes.
fn record_plan(ctx: &Context, key: &Key, plan: &endpointslices::Plan) {
    let m = &ctx.metrics;
    let mut share = Share::default();
    for stats in &plan.stats {
        m.slices
            .endpoints_added_per_sync
            .observe(&[], stats.added as f64);
        m.slices
            .endpoints_removed_per_sync
            .observe(&[], stats.removed as f64);
        share.endpoints += stats.endpoints as i64;
        share.slices += stats.slices as i64;
        share.desired_slices += stats.desired_slices as i64;
    }
    m.slice_share(key, Some(share), plan.traffic_distribution.as_deref());
}

/// The slices of the Service `key` with the managed-by value `managed_by`, those being deleted
/// left out.
fn service_slices(ctx: &Context, key: &Key, managed_by: &str) -> Vec<Arc<EndpointSlice>> {
    let (namespace, name) = key;
    ctx.slices
        .in_namespace(namespace)
        .into_iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter(|s| {
            let labels = s.labels();
            labels.get(LABEL_SERVICE_NAME) == Some(name)
                && labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(managed_by)
        })
        .collect()
}

/// Deletes `slices` of the Service `key`, each recorded in the tracker.
async fn delete_slices(ctx: &Context, key: &Key, slices: &[Arc<EndpointSlice>]) -> Result<()> {
    if slices.is_empty() {
        return Ok(());
    }
    let deletes = delete_slices_in_flight(ctx, key, slices);
    in_flight(ctx, &ctx.tracker, &ctx.slice_queue, key, deletes).await
}

async fn delete_slices_in_flight(
    ctx: &Context,
    key: &Key,
    slices: &[Arc<EndpointSlice>],
) -> Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &key.0);
    for slice in slices {
        match api
            .delete(&slice.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                ctx.tracker.deleted(key, &slice.name_any());
                ctx.metrics.slices.changed("delete");
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Warning events about the Service's selector annotation: malformed (nothing is written for
/// it), or ignored because `spec.selector` is set.
async fn annotation_events(ctx: &Context, svc: &views::ServiceRecord) {
    let (reason, note) = match &svc.annotation {
        SelectorAnnotation::Malformed(message) => ("InvalidSelectorAnnotation", message.clone()),
        SelectorAnnotation::Ignored => (
            "SelectorAnnotationIgnored",
            format!(
                "{} is ignored because spec.selector is set; remove one of them",
                endpoints::ANNOTATION_SELECTOR
            ),
        ),
        SelectorAnnotation::Absent | SelectorAnnotation::InUse => return,
    };
    let service = &svc.slice.service;
    let regarding = ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("Service".to_string()),
        namespace: Some(service.namespace.clone()),
        name: Some(service.name.clone()),
        uid: Some(svc.slice.uid.clone()),
        resource_version: svc.resource_version.clone(),
        ..ObjectReference::default()
    };
    warn(&ctx.svcplane_events, regarding, reason, note).await;
}

/// Runs `writes` of the Service `key`'s slices with `tracker` told they are in flight, so their
/// watch events are not mistaken for someone else's; queues the Service when an event that
/// arrived meanwhile was someone else's after all.
async fn in_flight<T>(
    ctx: &Context,
    tracker: &SliceTracker,
    queue: &Queue,
    key: &Key,
    writes: impl std::future::Future<Output = T>,
) -> T {
    tracker.writing(key);
    let out = writes.await;
    if tracker.written(key) {
        queue.add_after(key.clone(), ctx.slice_event_delay);
    }
    out
}

/// The writes of a slice plan: creates, updates, deletes, each recorded in the tracker.
async fn write_slices(
    key: &Key,
    ctx: &Context,
    svc: &views::ServiceRecord,
    existing: &[Arc<EndpointSlice>],
    plan: &endpointslices::Plan,
) -> Result<()> {
    let writes = write_slices_in_flight(key, ctx, svc, existing, plan);
    in_flight(ctx, &ctx.tracker, &ctx.slice_queue, key, writes).await
}

async fn write_slices_in_flight(
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
            Ok(created) => {
                ctx.tracker.wrote(
                    key,
                    &created.name_any(),
                    created.metadata.generation.unwrap_or(1),
                );
                ctx.metrics.slices.changed("create");
            }
            Err(e) if namespace_terminating(&e) => return Ok(()),
            Err(e) => return Err(Error::from(e)),
        }
    }
    for slice in &plan.update {
        let base = existing.iter().find(|s| s.name_any() == slice.name);
        let object = views::slice_to_api(svc, slice, base.map(|b| b.as_ref()));
        let updated = match base {
            Some(base) => write_over(&api, &slice.name, base, &object).await?,
            None => {
                api.replace(&slice.name, &PostParams::default(), &object)
                    .await?
            }
        };
        tracing::debug!(service = %format!("{namespace}/{name}"), slice = %slice.name,
            endpoints = slice.endpoints.len(), "updated an EndpointSlice");
        ctx.tracker.wrote(
            key,
            &updated.name_any(),
            updated.metadata.generation.unwrap_or_default(),
        );
        ctx.metrics.slices.changed("update");
    }
    for slice in &plan.delete {
        match api.delete(slice, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.tracker.deleted(key, slice);
                ctx.metrics.slices.changed("delete");
            }
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
    let sync = mirror(key, ctx);
    in_flight(ctx, &ctx.mirror_tracker, &ctx.mirror_queue, key, sync).await
}

/// [`reconcile_mirroring`], its writes in flight for the tracker.
async fn mirror(key: &Key, ctx: &Context) -> Result<()> {
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
        ctx.metrics.mirror_share(key, None);
        for slice in &existing {
            match api
                .delete(&slice.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    ctx.mirror_tracker.deleted(key, &slice.name_any());
                    ctx.metrics.mirroring.changed("delete");
                }
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
    let m = &ctx.metrics;
    let skipped = (plan.invalid + plan.over_limit) as f64;
    m.mirroring_addresses_skipped_per_sync.observe(&[], skipped);
    m.mirroring
        .endpoints_added_per_sync
        .observe(&[], plan.added as f64);
    m.mirroring_endpoints_updated_per_sync
        .observe(&[], plan.updated as f64);
    m.mirroring
        .endpoints_removed_per_sync
        .observe(&[], plan.removed as f64);
    let share = Share {
        endpoints: plan.endpoints as i64,
        slices: plan.slices as i64,
        desired_slices: plan.desired_slices as i64,
    };
    m.mirror_share(key, Some(share));
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
            Ok(created) => {
                ctx.mirror_tracker.wrote(
                    key,
                    &created.name_any(),
                    created.metadata.generation.unwrap_or(1),
                );
                m.mirroring.changed("create");
            }
            Err(e) if namespace_terminating(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    for slice in &plan.update {
        let base = existing.iter().find(|s| s.name_any() == slice.name);
        let object = views::mirrored_slice_to_api(ep, slice, base.map(|b| b.as_ref()));
        let updated = match base {
            Some(base) => write_over(&api, &slice.name, base, &object).await?,
            None => {
                api.replace(&slice.name, &PostParams::default(), &object)
                    .await?
            }
        };
        ctx.mirror_tracker.wrote(
            key,
            &updated.name_any(),
            updated.metadata.generation.unwrap_or_default(),
        );
        m.mirroring.changed("update");
    }
    for slice in &plan.delete {
        match api.delete(slice, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.mirror_tracker.deleted(key, slice);
                m.mirroring.changed("delete");
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
