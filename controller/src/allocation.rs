//! Allocation at admission: a Service's old and new state in; the values it needs allocated
//! from the ipam pools (requests exactly or not at all, the rest picked in the upper band
//! first) and the patched Service with its JSONPatch out — or a denial in kube-apiserver's
//! words. All or nothing: when any value of a request fails, the ones it took are freed.
//! Dry runs allocate nothing. Nothing is ever released here, except what a request that the
//! API server then abandoned took (the in-process admission of `svcplane dev` is told); the
//! releaser and repair do the rest.
//!
//! Owners: a value is taken for `namespace/name`. kube-apiserver admits a `generateName`
//! create before it picks the name, so such a request takes its values for
//! `namespace/<generateName>…<request uid>`, which no Service is called; the releaser re-keys
//! them to the Service that appears carrying them, and repair frees them if none does.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipam::store::Store;
use ipam::{Allocation, Allocator, Owner, Refusal, Release, Value};
use serde_json::{Value as Json, json};

use crate::plan::{Cluster, FieldError, Plan, Want, go_strings, inherit, plan, pool_of};
use crate::service::Svc;

/// One admission of a Service write.
#[derive(Debug, Clone)]
pub struct AllocationRequest {
    /// The admission's identity (an AdmissionReview's `uid`): what [`ServiceAllocator::abandon`]
    /// is given, and the owner of what a `generateName` create takes.
    pub uid: String,
    /// The Service as it would be stored.
    pub object: Json,
    /// The stored Service an update replaces.
    pub old_object: Option<Json>,
    pub dry_run: bool,
    /// When the caller stops waiting: no value is taken after it, and what was taken is given
    /// back, so nothing is allocated for an answer nobody reads.
    pub deadline: Option<Instant>,
}

/// How long what a request took is remembered for [`ServiceAllocator::abandon`]: the API
/// server abandons a write right after admitting it, so this only bounds the memory.
const ABANDON_WINDOW: Duration = Duration::from_secs(60);

/// The Service to store, and the JSONPatch from the request's object to it.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub object: Json,
    pub patch: json_patch::Patch,
}

/// A refusal, as the API server should answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub field: Option<String>,
}

impl From<FieldError> for Denial {
    fn from(e: FieldError) -> Denial {
        if e.internal {
            return internal(e.message);
        }
        Denial {
            code: 422,
            reason: "Invalid".into(),
            message: e.message,
            field: Some(e.field),
        }
    }
}

/// A 500 InternalError denial, as kube-apiserver words one.
pub(crate) fn internal(message: impl std::fmt::Display) -> Denial {
    Denial {
        code: 500,
        reason: "InternalError".into(),
        message: format!("Internal error occurred: {message}"),
        field: None,
    }
}

/// Allocates ClusterIPs, NodePorts and healthCheckNodePorts for Services.
pub struct ServiceAllocator<S: Store> {
    allocator: Arc<Allocator<S>>,
    cluster: Cluster,
    /// What each recent request took, by its uid, oldest first.
    recent: Mutex<Recent>,
}

/// What recent requests took, for [`ServiceAllocator::abandon`].
#[derive(Default)]
struct Recent {
    taken: HashMap<String, (String, Vec<Taken>)>,
    order: VecDeque<(Instant, String)>,
}

impl Recent {
    fn remember(&mut self, uid: &str, owner: &str, taken: Vec<Taken>, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && now.duration_since(*at) > ABANDON_WINDOW
        {
            let (_, old) = self.order.pop_front().expect("peeked");
            self.taken.remove(&old);
        }
        if taken.is_empty() || uid.is_empty() {
            return;
        }
        self.order.push_back((now, uid.to_string()));
        self.taken
            .insert(uid.to_string(), (owner.to_string(), taken));
    }
}

/// What one value of the plan is, for messages.
#[derive(Clone, Copy)]
enum Purpose {
    ClusterIp,
    NodePort(usize),
    HealthCheck,
}

impl Purpose {
    fn owner_purpose(self) -> &'static str {
        match self {
            Purpose::ClusterIp => "clusterIP",
            Purpose::NodePort(_) => "nodePort",
            Purpose::HealthCheck => "healthCheckNodePort",
        }
    }
}

impl<S: Store> ServiceAllocator<S> {
    /// An allocator for a cluster with these service IP families (primary first); their pools
    /// (`ipv4`, `ipv6`) and the `nodeport` pool must exist in the allocator's store.
    pub fn new(allocator: Arc<Allocator<S>>, cluster: Cluster) -> ServiceAllocator<S> {
        ServiceAllocator {
            allocator,
            cluster,
            recent: Mutex::default(),
        }
    }

    pub fn allocator(&self) -> &Arc<Allocator<S>> {
        &self.allocator
    }

    /// Admits one Service write.
    pub async fn admit(&self, request: &AllocationRequest) -> Result<Admitted, Denial> {
        let new = Svc::from_json(&request.object);
        let old = request.old_object.as_ref().map(Svc::from_json);
        let new = match &old {
            Some(old) => inherit(old, &new),
            None => new,
        };
        let plan = plan(&self.cluster, old.as_ref(), &new)?;
        let owner_key = owner_key(&new, &request.object, &request.uid);
        let mut taken: Vec<Taken> = Vec::new();
        let result = self
            .carry_out(&plan, &new, &owner_key, request, &mut taken)
            .await;
        let values = match result {
            Ok(values) => values,
            Err(denial) => {
                self.roll_back(&owner_key, &taken).await;
                return Err(denial);
            }
        };
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remember(&request.uid, &owner_key, taken, Instant::now());
        let object = render(&request.object, &new, &plan, &values);
        let patch = json_patch::diff(&request.object, &object);
        Ok(Admitted { object, patch })
    }

    /// The write admitted by request `uid` did not happen: gives back what that request took —
    /// values that were free are freed, values that were held for the Service are held again —
    /// and nothing else, whatever the object carries (a value it requested that a stored
    /// Service of the same name already had was not taken by this request).
    pub async fn abandon(&self, uid: &str) {
        let entry = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .taken
            .remove(uid);
        if let Some((owner, taken)) = entry {
            self.roll_back(&owner, &taken).await;
        }
    }

    /// Gives back what a failed request took: values that were free are freed, values that
    /// were held for this Service are held again.
    async fn roll_back(&self, owner: &str, taken: &[Taken]) {
        for t in taken {
            if let Err(e) = self
                .allocator
                .release(t.pool, t.value, owner, t.release)
                .await
            {
                tracing::warn!(pool = t.pool, value = %t.value, owner, error = %e, "could not give back a value of a failed request; repair will");
            }
        }
    }

    async fn carry_out(
        &self,
        plan: &Plan,
        new: &Svc,
        owner_key: &str,
        request: &AllocationRequest,
        taken: &mut Vec<Taken>,
    ) -> Result<Chosen, Denial> {
        let (dry_run, deadline) = (request.dry_run, request.deadline);
        let mut chosen = Chosen::default();
        for (i, want) in plan.cluster_ips.iter().enumerate() {
            let pool = pool_of(plan.ip_families[i]);
            let want = match want {
                Want::Keep(ip) => Want::Keep(Value::Ip(*ip)),
                Want::Request(ip) => Want::Request(Value::Ip(*ip)),
                Want::Any => Want::Any,
            };
            let value = self
                .get(
                    pool,
                    want,
                    owner_key,
                    Purpose::ClusterIp,
                    new,
                    (dry_run, deadline),
                    taken,
                )
                .await?;
            chosen.cluster_ips.push(value.map(|v| match v {
                Value::Ip(ip) => ip,
                Value::Port(_) => unreachable!("IP pools hold IPs"),
            }));
        }
        for group in &plan.node_ports {
            let want = match group.want {
                Want::Keep(n) => Want::Keep(Value::Port(n)),
                Want::Request(n) => Want::Request(Value::Port(n)),
                Want::Any => Want::Any,
            };
            let purpose = Purpose::NodePort(group.ports[0]);
            let value = self
                .get(
                    ipam::spec::NODEPORT,
                    want,
                    owner_key,
                    purpose,
                    new,
                    (dry_run, deadline),
                    taken,
                )
                .await?;
            chosen
                .node_ports
                .push((group.ports.clone(), value.map(port_of)));
        }
        if let Some(want) = plan.health_check {
            let want = match want {
                Want::Keep(n) => Want::Keep(Value::Port(n)),
                Want::Request(n) => Want::Request(Value::Port(n)),
                Want::Any => Want::Any,
            };
            let value = self
                .get(
                    ipam::spec::NODEPORT,
                    want,
                    owner_key,
                    Purpose::HealthCheck,
                    new,
                    (dry_run, deadline),
                    taken,
                )
                .await?;
            chosen.health_check = value.map(port_of);
        }
        Ok(chosen)
    }

    /// One value: kept, requested or picked. Dry runs check requests against the pool's range
    /// and pick nothing.
    #[allow(clippy::too_many_arguments)]
    async fn get(
        &self,
        pool: &'static str,
        want: Want<Value>,
        owner_key: &str,
        purpose: Purpose,
        new: &Svc,
        (dry_run, deadline): (bool, Option<Instant>),
        taken: &mut Vec<Taken>,
    ) -> Result<Option<Value>, Denial> {
        let requested = match want {
            Want::Keep(v) => return Ok(Some(v)),
            Want::Request(v) => Some(v),
            Want::Any => None,
        };
        if dry_run {
            if let Some(v) = requested {
                let status = self
                    .allocator
                    .view()
                    .pools()
                    .into_iter()
                    .find(|p| p.spec.name == pool);
                let Some(status) = status else {
                    return Err(internal(format!(
                        "the {pool} pool does not exist; create it with svcplane ipam apply"
                    )));
                };
                if status
                    .pool
                    .raw(v)
                    .is_none_or(|raw| !status.pool.contains(raw))
                {
                    let refusal = Refusal::OutOfRange {
                        value: v,
                        kind: status.pool.kind,
                        valid: status.pool.ranges_text(),
                    };
                    return Err(refused(purpose, requested, &refusal, new));
                }
            }
            return Ok(requested);
        }
        if let Some(deadline) = deadline
            && Instant::now() >= deadline
        {
            return Err(timed_out());
        }
        // A requested value the object already has allocated (a create of a name that exists,
        // a retried write) was not taken by this request: a failure must not give it back. One
        // held for the object goes back to being held.
        let prior = match requested {
            Some(v) => self.prior(pool, v, owner_key).await,
            None => Prior::Free,
        };
        let owner = Owner::new(owner_key, purpose.owner_purpose());
        let allocation = match deadline {
            Some(deadline) => {
                self.allocator
                    .allocate_until(pool, &owner, requested, deadline)
                    .await
            }
            None => self.allocator.allocate(pool, &owner, requested).await,
        };
        match allocation {
            Ok(Allocation::Allocated(v)) => {
                match prior {
                    Prior::Ours => {}
                    Prior::HeldForUs => taken.push(Taken {
                        pool,
                        value: v,
                        release: Release::Hold,
                    }),
                    Prior::Free => taken.push(Taken {
                        pool,
                        value: v,
                        release: Release::Now,
                    }),
                }
                Ok(Some(v))
            }
            Ok(Allocation::Refused(refusal)) => Err(refused(purpose, requested, &refusal, new)),
            Err(e) if e.is_transient() && deadline.is_some_and(|d| Instant::now() >= d) => {
                Err(timed_out())
            }
            Err(e) => Err(internal(format!(
                "failed to allocate from the {pool} pool: {e}"
            ))),
        }
    }
}

impl<S: Store> ServiceAllocator<S> {
    /// What `value` was to `object` before this request, on a fresh read of the store.
    async fn prior(&self, pool: &str, value: Value, object: &str) -> Prior {
        match self.allocator.store().get(pool, &value.to_string()).await {
            Ok((Some((record, _)), _)) if record.owner.object == object => {
                if record.is_allocated() {
                    Prior::Ours
                } else {
                    Prior::HeldForUs
                }
            }
            _ => Prior::Free,
        }
    }
}

/// A value's state for an object before a request took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prior {
    Ours,
    HeldForUs,
    Free,
}

/// A value a request took, and how to give it back if the request fails.
#[derive(Debug, Clone, Copy)]
struct Taken {
    pool: &'static str,
    value: Value,
    release: Release,
}

/// The owner of what a request takes: the Service's `namespace/name`, or for a `generateName`
/// create (named only after admission) `namespace/<generateName>…<uid>`.
fn owner_key(new: &Svc, object: &Json, uid: &str) -> String {
    if !new.name.is_empty() {
        return new.key();
    }
    let generate = object
        .pointer("/metadata/generateName")
        .and_then(Json::as_str)
        .unwrap_or("");
    format!("{}/{generate}…{uid}", new.namespace)
}

/// Whether `object` is the placeholder owner of a `generateName` create's values (see
/// [`owner_key`]): the Service that appears carrying them claims them as a matter of course.
pub fn is_placeholder(object: &str) -> bool {
    object.contains('…')
}

/// The answer when the caller's deadline passed before every value was taken.
fn timed_out() -> Denial {
    Denial {
        code: 504,
        reason: "Timeout".into(),
        message: "Timeout: the ipam store did not answer within the allocation deadline (--allocation-timeout); nothing was allocated".into(),
        field: None,
    }
}

fn port_of(v: Value) -> u16 {
    match v {
        Value::Port(n) => n,
        Value::Ip(_) => unreachable!("the nodeport pool holds ports"),
    }
}

/// Upstream's answer for a refused value.
fn refused(purpose: Purpose, requested: Option<Value>, refusal: &Refusal, new: &Svc) -> Denial {
    match (purpose, requested, refusal) {
        (Purpose::ClusterIp, None, _) => {
            internal(format!("failed to allocate a serviceIP: {refusal}"))
        }
        (Purpose::ClusterIp, Some(ip), _) => FieldError {
            field: "spec.clusterIPs".into(),
            message: format!(
                "spec.clusterIPs: Invalid value: {}: failed to allocate IP {ip}: {refusal}",
                go_strings(&new.cluster_ips)
            ),
            internal: false,
        }
        .into(),
        (Purpose::NodePort(_), None, _) | (Purpose::HealthCheck, None, _) => {
            internal(format!("failed to allocate a nodePort: {refusal}"))
        }
        (Purpose::NodePort(i), Some(port), _) => FieldError {
            field: format!("spec.ports[{i}].nodePort"),
            message: format!("spec.ports[{i}].nodePort: Invalid value: {port}: {refusal}"),
            internal: false,
        }
        .into(),
        (Purpose::HealthCheck, Some(port), _) => internal(format!(
            "failed to allocate requested HealthCheck NodePort {port}: {refusal}"
        )),
    }
}

/// The values chosen for a plan (None: left for later, in dry runs).
#[derive(Debug, Default)]
struct Chosen {
    cluster_ips: Vec<Option<IpAddr>>,
    node_ports: Vec<(Vec<usize>, Option<u16>)>,
    health_check: Option<u16>,
}

/// The Service with the plan's families and the chosen values written in.
fn render(original: &Json, new: &Svc, plan: &Plan, chosen: &Chosen) -> Json {
    let mut object = original.clone();
    if !object.get("spec").is_some_and(Json::is_object) {
        object["spec"] = json!({});
    }
    let spec = object["spec"]
        .as_object_mut()
        .expect("made an object above");
    if new.is_external_name() {
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            spec.remove(field);
        }
    } else {
        spec.insert(
            "ipFamilies".into(),
            json!(
                plan.ip_families
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
            ),
        );
        if let Some(policy) = &plan.ip_family_policy {
            spec.insert("ipFamilyPolicy".into(), json!(policy));
        }
        if plan.headless {
            spec.insert("clusterIP".into(), json!("None"));
            spec.insert("clusterIPs".into(), json!(["None"]));
        } else {
            let ips: Vec<String> = chosen
                .cluster_ips
                .iter()
                .flatten()
                .map(|ip| ip.to_string())
                .collect();
            if ips.is_empty() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            } else {
                spec.insert("clusterIP".into(), json!(ips[0]));
                spec.insert("clusterIPs".into(), json!(ips));
            }
        }
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Json::as_array_mut) {
        if plan.clear_node_ports {
            for port in ports.iter_mut().filter_map(Json::as_object_mut) {
                port.remove("nodePort");
            }
        }
        for (indexes, number) in &chosen.node_ports {
            for i in indexes {
                if let (Some(port), Some(n)) =
                    (ports.get_mut(*i).and_then(Json::as_object_mut), number)
                {
                    port.insert("nodePort".into(), json!(n));
                }
            }
        }
    }
    match chosen.health_check {
        Some(n) => {
            spec.insert("healthCheckNodePort".into(), json!(n));
        }
        None if plan.health_check.is_none() => {
            spec.remove("healthCheckNodePort");
        }
        None => {}
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipam::Family;
    use ipam::store::memory::MemoryStore;

    async fn allocator(hold: Duration) -> ServiceAllocator<MemoryStore> {
        let store = MemoryStore::new();
        let specs =
            ipam::spec::specs_from_flags(&["10.96.0.0/24".into()], Some("30000-30099"), hold)
                .unwrap();
        ipam::apply::apply(&store, &specs).await.unwrap();
        let allocator = Allocator::start(store, Default::default()).await.unwrap();
        ServiceAllocator::new(
            Arc::new(allocator),
            Cluster {
                families: vec![Family::IPv4],
            },
        )
    }

    fn request(uid: &str, object: Json) -> AllocationRequest {
        AllocationRequest {
            uid: uid.into(),
            object,
            old_object: None,
            dry_run: false,
            deadline: None,
        }
    }

    fn web(cluster_ip: Option<&str>) -> Json {
        let mut object = json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]},
        });
        if let Some(ip) = cluster_ip {
            object["spec"]["clusterIP"] = json!(ip);
        }
        object
    }

    fn owner_of(a: &ServiceAllocator<MemoryStore>, ip: &str) -> Option<String> {
        let value = Value::Ip(ip.parse().unwrap());
        let record = a.allocator().view().record("ipv4", value).unwrap()?;
        record.is_allocated().then_some(record.owner.object)
    }

    #[tokio::test]
    async fn an_abandoned_create_of_a_name_that_exists_frees_nothing_the_live_service_carries() {
        let a = allocator(Duration::ZERO).await;
        a.admit(&request("first", web(Some("10.96.0.50"))))
            .await
            .unwrap();
        // A second create of the same name asks for the same IP: it is the object's already, so
        // this request takes nothing; the storage then refuses the name.
        a.admit(&request("second", web(Some("10.96.0.50"))))
            .await
            .unwrap();
        a.abandon("second").await;
        assert_eq!(owner_of(&a, "10.96.0.50").as_deref(), Some("shop/web"));
    }

    #[tokio::test]
    async fn an_abandoned_request_gives_back_exactly_what_it_took() {
        let a = allocator(Duration::ZERO).await;
        let admitted = a.admit(&request("one", web(None))).await.unwrap();
        let ip = admitted.object["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(owner_of(&a, &ip).as_deref(), Some("shop/web"));
        a.abandon("one").await;
        assert_eq!(owner_of(&a, &ip), None);
        // Abandoning twice, or a request never seen, does nothing.
        a.abandon("one").await;
        a.abandon("unknown").await;
    }

    #[tokio::test]
    async fn a_generate_name_create_takes_its_values_for_a_name_no_service_has() {
        let a = allocator(Duration::ZERO).await;
        let object = json!({
            "metadata": {"generateName": "web-", "namespace": "shop"},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]},
        });
        let admitted = a.admit(&request("7f3c", object)).await.unwrap();
        let ip = admitted.object["spec"]["clusterIP"].as_str().unwrap();
        assert_eq!(owner_of(&a, ip).as_deref(), Some("shop/web-…7f3c"));
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_a_timeout_that_takes_nothing() {
        let a = allocator(Duration::ZERO).await;
        let late = AllocationRequest {
            deadline: Some(Instant::now()),
            ..request("late", web(Some("10.96.0.60")))
        };
        let denial = a.admit(&late).await.unwrap_err();
        assert_eq!((denial.code, denial.reason.as_str()), (504, "Timeout"));
        assert_eq!(owner_of(&a, "10.96.0.60"), None);
    }
}
