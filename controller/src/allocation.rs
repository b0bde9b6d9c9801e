//! Allocation at admission: a Service's old and new state in; the values it needs allocated
//! from the ipam pools (requests exactly or not at all, the rest picked in the upper band
//! first) and the patched Service with its JSONPatch out — or a denial in kube-apiserver's
//! words. All or nothing: when any value of a request fails, the ones it took are freed.
//! Dry runs allocate nothing. Nothing is ever released here; the releaser does that.

use std::net::IpAddr;
use std::sync::Arc;

use ipam::store::Store;
use ipam::{Allocation, Allocator, Owner, Refusal, Release, Value};
use serde_json::{Value as Json, json};

use crate::plan::{Cluster, FieldError, Plan, Want, go_strings, inherit, plan, pool_of};
use crate::service::Svc;

/// One admission of a Service write.
#[derive(Debug, Clone)]
pub struct AllocationRequest {
    /// The Service as it would be stored.
    pub object: Json,
    /// The stored Service an update replaces.
    pub old_object: Option<Json>,
    pub dry_run: bool,
}

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

fn internal(message: impl std::fmt::Display) -> Denial {
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
        ServiceAllocator { allocator, cluster }
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
        let owner_key = new.key();
        let mut taken: Vec<Taken> = Vec::new();
        let result = self
            .carry_out(&plan, &new, &owner_key, request.dry_run, &mut taken)
            .await;
        let values = match result {
            Ok(values) => values,
            Err(denial) => {
                self.roll_back(&owner_key, &taken).await;
                return Err(denial);
            }
        };
        let object = render(&request.object, &new, &plan, &values);
        let patch = json_patch::diff(&request.object, &object);
        Ok(Admitted { object, patch })
    }

    /// The write of `object` (admitted over `old_object`) did not happen: gives back what it
    /// carries that the stored Service did not, with the pool's hold, so that no other Service
    /// can take it meanwhile. (A concurrent write of the same Service may have stored one of
    /// them; the releaser records what stored Services carry.)
    pub async fn abandon(&self, object: &Json, old_object: Option<&Json>) {
        let new = Svc::from_json(object);
        let before = old_object
            .map(|o| crate::plan::carried(&Svc::from_json(o)))
            .unwrap_or_default();
        let taken: Vec<Taken> = crate::plan::carried(&new)
            .into_iter()
            .filter(|v| !before.contains(v))
            .map(|(pool, value)| Taken {
                pool,
                value,
                release: Release::Hold,
            })
            .collect();
        self.roll_back(&new.key(), &taken).await;
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
        dry_run: bool,
        taken: &mut Vec<Taken>,
    ) -> Result<Chosen, Denial> {
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
                    dry_run,
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
                    dry_run,
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
                    dry_run,
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
        dry_run: bool,
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
        // A requested value the object already has allocated (a create of a name that exists,
        // a retried write) was not taken by this request: a failure must not give it back. One
        // held for the object goes back to being held.
        let prior = match requested {
            Some(v) => self.prior(pool, v, owner_key).await,
            None => Prior::Free,
        };
        let owner = Owner::new(owner_key, purpose.owner_purpose());
        match self.allocator.allocate(pool, &owner, requested).await {
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
