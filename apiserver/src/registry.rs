//! The REST semantics of every resource over [`Storage`]: create, get, list with selectors and
//! consistent pagination, guaranteed updates (PUT, the three patch types, status
//! subresources), deletes with finalizers and preconditions, namespace termination, and the
//! Service admission chain. Kube-apiserver's etcd3 store is the model; responses carry
//! `metadata.resourceVersion` = the storage revision of the write.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::admission::{AdmissionRequest, Operation, ServiceAdmission};
use crate::error::{ApiError, Cause};
use crate::object::{self, FieldValidation, meta_mut, meta_str};
use crate::resource::{RESOURCES, Resource};
use crate::selector::{FieldSelector, LabelSelector};
use crate::storage::{Cas, Kv, Storage};

/// How the registry behaves beyond the storage.
#[derive(Clone)]
pub struct RegistryConfig {
    /// Key prefix of every object, e.g. `/svcplane/registry/`.
    pub prefix: String,
    /// Called in turn on every Service create and update.
    pub admission: Vec<Arc<dyn ServiceAdmission>>,
    /// With a kubelet (the simulated one) to finish them: the longest grace period a pod
    /// delete gets. A scheduled pod then stays, with `deletionTimestamp`, for
    /// min(requested or `terminationGracePeriodSeconds`, this) seconds (rounded up) until the
    /// kubelet removes it. None: no kubelet, pods go at once.
    pub max_pod_grace: Option<Duration>,
    /// How often a terminating namespace's remaining contents are checked.
    pub namespace_cleanup_interval: Duration,
    /// How long the garbage collector waits before retrying after a failed action.
    pub gc_retry_interval: Duration,
}

/// The object store with Kubernetes semantics.
#[derive(Clone)]
pub struct Registry {
    storage: Storage,
    config: Arc<RegistryConfig>,
}

/// Options every write takes.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
}

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything except `.status`.
    Main,
    /// The `/status` subresource: only `.status`.
    Status,
}

/// The body of a PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

/// `DeleteOptions` as far as they matter here.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub dry_run: bool,
    /// `propagationPolicy` (or `orphanDependents: true` as Orphan); None is Background.
    pub propagation: Option<Propagation>,
}

/// What happens to an object's dependents when it is deleted ([`crate::gc`] carries it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes at once; its dependents after it.
    Background,
    /// The object stays, with the `foregroundDeletion` finalizer, until the dependents that
    /// block it are gone.
    Foreground,
    /// The dependents lose their reference to it and stay.
    Orphan,
}

impl Propagation {
    /// `propagationPolicy` as the API spells it.
    pub fn parse(text: &str) -> Result<Propagation, ApiError> {
        match text {
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::bad_request(format!(
                "DeleteOptions.propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            ))),
        }
    }

    /// The finalizer that holds the owner while the collector works, if any.
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(crate::gc::FOREGROUND),
            Propagation::Orphan => Some(crate::gc::ORPHAN),
        }
    }
}

/// A list request.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// Read at exactly this revision (`resourceVersionMatch=Exact`, or a continue token).
    pub exact_revision: Option<u64>,
}

/// A list answer.
#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_token: Option<String>,
}

/// The result of a write: the object and warnings for the client.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// The continue token: upstream's shape, base64 of JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

/// Namespaces that may not be deleted, as upstream's NamespaceLifecycle admission.
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// How many names a generateName create tries before giving up, as upstream.
const GENERATE_NAME_ATTEMPTS: usize = 8;

impl Registry {
    pub fn new(storage: Storage, config: RegistryConfig) -> Registry {
        Registry {
            storage,
            config: Arc::new(config),
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The key prefix every object is stored under.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// How long the garbage collector waits before retrying after a failed action.
    pub fn gc_retry_interval(&self) -> Duration {
        self.config.gc_retry_interval
    }

    /// The storage prefix of a resource in a namespace (or across namespaces with `None`).
    pub fn collection_key(&self, resource: &Resource, namespace: Option<&str>) -> String {
        match (resource.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{}/{ns}/", self.config.prefix, resource.storage),
            _ => format!("{}{}/", self.config.prefix, resource.storage),
        }
    }

    fn key(&self, resource: &Resource, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.collection_key(resource, namespace))
    }

    fn decode_kv(resource: &Resource, kv: &Kv) -> Result<Value, ApiError> {
        let object: Value = serde_json::from_slice(&kv.value).map_err(|e| {
            ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key))
        })?;
        Ok(object::with_revision(
            resource.from_storage(object),
            kv.mod_revision,
        ))
    }

    fn encode(resource: &Resource, object: &Value) -> Bytes {
        let mut stored = resource.to_storage(object.clone());
        meta_mut(&mut stored).remove("resourceVersion");
        Bytes::from(serde_json::to_vec(&stored).expect("JSON values serialize"))
    }

    /// Creates the namespaces every cluster has.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        let ns = crate::resource::find("", "v1", "namespaces").expect("namespaces are served");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            let options = WriteOptions {
                dry_run: false,
                validation: FieldValidation::Strict,
            };
            match self.create(ns, None, body, options).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        // Finish the terminations a previous run left.
        let terminating = self.list(ns, None, &ListOptions::default()).await?;
        for namespace in terminating.items {
            if namespace.pointer("/metadata/deletionTimestamp").is_some() {
                self.spawn_namespace_cleanup(meta_str(&namespace, "name").to_string());
            }
        }
        Ok(())
    }

    /// Writes an object the server itself owns straight to storage, creating or replacing
    /// it, without validation or admission (kube-apiserver's own endpoint reconciler does
    /// the same for `default/kubernetes`); nothing is written when nothing changed.
    pub async fn put_unvalidated(
        &self,
        resource: &Resource,
        namespace: &str,
        object: Value,
    ) -> Result<Value, ApiError> {
        let namespace = resource.namespaced.then_some(namespace);
        let key = self.key(resource, namespace, meta_str(&object, "name"));
        loop {
            let (kv, _) = self.storage.get(&key).await?;
            let current = kv
                .as_ref()
                .map(|kv| Self::decode_kv(resource, kv))
                .transpose()?;
            let next = crate::system_services::merged(current.as_ref(), &object);
            let result = match (&kv, &current) {
                (Some(kv), Some(current)) => {
                    let mut unchanged = current.clone();
                    meta_mut(&mut unchanged).remove("resourceVersion");
                    if unchanged == next {
                        return Ok(current.clone());
                    }
                    self.storage
                        .update(&key, Self::encode(resource, &next), kv.mod_revision)
                        .await?
                }
                _ => {
                    self.storage
                        .create(&key, Self::encode(resource, &next))
                        .await?
                }
            };
            if let Cas::Done(revision) = result {
                return Ok(object::with_revision(next, revision));
            }
        }
    }

    pub async fn get(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (kv, _) = self
            .storage
            .get(&self.key(resource, namespace, name))
            .await?;
        match kv {
            Some(kv) => Self::decode_kv(resource, &kv),
            None => Err(ApiError::not_found(resource.group, resource.plural, name)),
        }
    }

    async fn check_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        let ns = crate::resource::find("", "v1", "namespaces").expect("namespaces are served");
        let object = self.get(ns, None, namespace).await?;
        if object.pointer("/metadata/deletionTimestamp").is_some()
            || object.pointer("/status/phase") == Some(&json!("Terminating"))
        {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            ))
            .with_cause_details("namespaces", namespace));
        }
        Ok(())
    }

    /// POST: a new object.
    pub async fn create(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        body: Value,
        options: WriteOptions,
    ) -> Result<Written, ApiError> {
        let (mut object, warnings) = object::decode(resource, body, options.validation)?;
        let meta = meta_mut(&mut object);
        if resource.namespaced {
            let url_ns = namespace.unwrap_or("");
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(url_ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let given_name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if given_name.is_empty() && generate.is_empty() {
            return Err(ApiError::invalid(
                resource.group,
                resource.kind,
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    field: "metadata.name".into(),
                    message: "metadata.name: Required value: name or generateName is required"
                        .into(),
                }],
            ));
        }
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(field);
        }
        object::prepare_create(resource, &mut object);
        object::apply_defaults(resource, &mut object);
        if resource.namespaced {
            self.check_namespace(namespace.unwrap_or("")).await?;
        }
        // Admissions that run as kube-apiserver's webhooks see the object before it has a
        // generated name, a UID and a creation timestamp, and before validation: once.
        let uid = object::new_uid();
        let early =
            resource.is_service() && self.config.admission.iter().any(|a| a.before_naming());
        if early {
            // Validated once it has its name, in the loop below.
            object = self
                .admit(
                    &uid,
                    resource,
                    Operation::Create,
                    object,
                    None,
                    AdmitRun {
                        dry_run: options.dry_run,
                        validate: false,
                    },
                )
                .await?;
        }
        let uid = &uid;
        let meta = meta_mut(&mut object);
        meta.insert("uid".into(), json!(object::new_uid()));
        meta.insert("creationTimestamp".into(), json!(object::now()));
        if object.get("spec").is_some()
            || matches!(resource.kind, "Service" | "Pod" | "EndpointSlice")
        {
            meta_mut(&mut object).insert("generation".into(), json!(1));
        }
        for attempt in 0..GENERATE_NAME_ATTEMPTS {
            let mut candidate = object.clone();
            if given_name.is_empty() {
                let name = object::generate_name(&generate);
                meta_mut(&mut candidate).insert("name".into(), json!(name));
            }
            if resource.kind == "Namespace" {
                let name = meta_str(&candidate, "name").to_string();
                candidate["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
            // Admitted early, the write that will not happen is given back to the admissions
            // that can be told.
            let abandon_early = |candidate: &Value| {
                let candidate = candidate.clone();
                async move {
                    if early && !options.dry_run {
                        let count = self.config.admission.len();
                        self.abandon(uid, Operation::Create, &candidate, None, count)
                            .await;
                    }
                }
            };
            if let Err(e) = self.validate(resource, &candidate, None) {
                abandon_early(&candidate).await;
                return Err(e);
            }
            // An existing name fails before admission allocates anything for it (unless it
            // ran early, as kube-apiserver's webhooks do).
            let wanted = meta_str(&candidate, "name").to_string();
            let (existing, _) = self
                .storage
                .get(&self.key(resource, namespace, &wanted))
                .await?;
            if existing.is_some() {
                if given_name.is_empty() && attempt + 1 < GENERATE_NAME_ATTEMPTS {
                    continue;
                }
                abandon_early(&candidate).await;
                return Err(ApiError::already_exists(
                    resource.group,
                    resource.plural,
                    &wanted,
                ));
            }
            let candidate = if early {
                candidate
            } else {
                self.admit(
                    uid,
                    resource,
                    Operation::Create,
                    candidate,
                    None,
                    AdmitRun {
                        dry_run: options.dry_run,
                        validate: true,
                    },
                )
                .await?
            };
            let name = meta_str(&candidate, "name").to_string();
            if options.dry_run {
                return Ok(Written {
                    object: candidate,
                    warnings,
                });
            }
            let key = self.key(resource, namespace, &name);
            let result = self
                .storage
                .create(&key, Self::encode(resource, &candidate))
                .await;
            if let Ok(Cas::Done(revision)) = result {
                // The namespace may have started terminating while this create was admitted;
                // its cleanup could then have missed the new object, so it does not stay.
                if resource.namespaced
                    && let Err(e) = self.check_namespace(namespace.unwrap_or("")).await
                {
                    self.storage.delete(&key, revision).await?;
                    if resource.is_service() {
                        let count = self.config.admission.len();
                        self.abandon(uid, Operation::Create, &candidate, None, count)
                            .await;
                    }
                    return Err(e);
                }
                return Ok(Written {
                    object: object::with_revision(candidate, revision),
                    warnings,
                });
            }
            if resource.is_service() {
                let count = self.config.admission.len();
                self.abandon(uid, Operation::Create, &candidate, None, count)
                    .await;
            }
            match result? {
                Cas::Failed(_) if given_name.is_empty() && attempt + 1 < GENERATE_NAME_ATTEMPTS => {
                    continue;
                }
                _ => {
                    return Err(ApiError::already_exists(
                        resource.group,
                        resource.plural,
                        &name,
                    ));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn validate(
        &self,
        resource: &Resource,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        // Service validation includes its metadata.
        let causes = if resource.is_service() {
            crate::validation::validate_service(object, old)
        } else {
            crate::validation::validate_metadata(
                resource.kind,
                object.get("metadata").unwrap_or(&Value::Null),
            )
        };
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(
                resource.group,
                resource.kind,
                meta_str(object, "name"),
                causes,
            ))
        }
    }

    async fn admit(
        &self,
        uid: &str,
        resource: &Resource,
        operation: Operation,
        mut object: Value,
        old: Option<&Value>,
        run: AdmitRun,
    ) -> Result<Value, ApiError> {
        let AdmitRun { dry_run, validate } = run;
        if !resource.is_service() {
            return Ok(object);
        }
        let mut admitted_by = 0;
        let mut failure = None;
        for admission in &self.config.admission {
            let request = AdmissionRequest {
                uid: uid.to_string(),
                operation,
                namespace: meta_str(&object, "namespace").to_string(),
                name: meta_str(&object, "name").to_string(),
                object: object.clone(),
                old_object: old.cloned(),
                dry_run,
            };
            match admission.admit(request).await {
                Ok(admitted) => {
                    admitted_by += 1;
                    match object::canonical(resource, admitted) {
                        Ok(canonical) => object = canonical,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                Err(denial) => {
                    failure = Some(denied(resource, &object, denial));
                    break;
                }
            }
        }
        // What admission added must be valid too.
        let failure = match failure {
            Some(e) => Some(e),
            None if validate => self.validate(resource, &object, old).err(),
            None => None,
        };
        if let Some(e) = failure {
            if !dry_run {
                self.abandon(uid, operation, &object, old, admitted_by)
                    .await;
            }
            return Err(e);
        }
        Ok(object)
    }

    /// Tells the first `count` admissions that the write of `object` they admitted will not
    /// happen.
    async fn abandon(
        &self,
        uid: &str,
        operation: Operation,
        object: &Value,
        old: Option<&Value>,
        count: usize,
    ) {
        for admission in self.config.admission.iter().take(count).rev() {
            let request = AdmissionRequest {
                uid: uid.to_string(),
                operation,
                namespace: meta_str(object, "namespace").to_string(),
                name: meta_str(object, "name").to_string(),
                object: object.clone(),
                old_object: old.cloned(),
                dry_run: false,
            };
            admission.abandon(request).await;
        }
    }

    /// Reads, changes and writes an object until the write lands on the revision it read
    /// (upstream's GuaranteedUpdate). `change` gets the current object (with its
    /// resourceVersion) and returns the desired one; a resourceVersion in the desired object
    /// other than the current one is a 409 Conflict.
    pub async fn update_with<F>(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        part: Part,
        options: WriteOptions,
        mut change: F,
    ) -> Result<Written, ApiError>
    where
        F: FnMut(&Value) -> Result<(Value, Vec<String>), ApiError>,
    {
        let key = self.key(resource, namespace, name);
        loop {
            let (kv, _) = self.storage.get(&key).await?;
            let Some(kv) = kv else {
                return Err(ApiError::not_found(resource.group, resource.plural, name));
            };
            let current = Self::decode_kv(resource, &kv)?;
            let (desired, warnings) = change(&current)?;
            let client_rv = meta_str(&desired, "resourceVersion");
            if !client_rv.is_empty() && client_rv != meta_str(&current, "resourceVersion") {
                return Err(ApiError::conflict(resource.group, resource.plural, name));
            }
            let uid = meta_str(&desired, "uid");
            if !uid.is_empty() && uid != meta_str(&current, "uid") {
                return Err(ApiError::conflict_with(
                    resource.group,
                    resource.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&current, "uid")
                    ),
                ));
            }
            let mut next = self.merge_update(resource, &current, desired, part)?;
            let uid = object::new_uid();
            if part == Part::Main {
                object::patch_allocated_values(resource, &current, &mut next);
                object::drop_type_dependent_fields(resource, &current, &mut next);
                object::trim_for_single_stack(resource, &current, &mut next);
                object::apply_defaults(resource, &mut next);
                // kube-apiserver runs mutating webhooks, then its allocator, then validation:
                // a Service update reaches admission unvalidated (so the allocator's refusals
                // come before validation's) and is validated after it.
                if !resource.is_service() {
                    self.validate(resource, &next, Some(&current))?;
                }
                next = self
                    .admit(
                        &uid,
                        resource,
                        Operation::Update,
                        next,
                        Some(&current),
                        AdmitRun {
                            dry_run: options.dry_run,
                            validate: true,
                        },
                    )
                    .await?;
            } else {
                self.validate(resource, &next, Some(&current))?;
            }
            if next == current {
                return Ok(Written {
                    object: current,
                    warnings,
                });
            }
            if options.dry_run {
                return Ok(Written {
                    object: next,
                    warnings,
                });
            }
            let finished = next.pointer("/metadata/deletionTimestamp").is_some()
                && object::finalizers(&next).is_empty()
                && !self.kept_while_terminating(resource, &next);
            let result = if finished {
                self.storage.delete(&key, kv.mod_revision).await
            } else {
                self.storage
                    .update(&key, Self::encode(resource, &next), kv.mod_revision)
                    .await
            };
            if let Ok(Cas::Done(revision)) = result {
                return Ok(Written {
                    object: object::with_revision(next, revision),
                    warnings,
                });
            }
            if part == Part::Main && resource.is_service() {
                let count = self.config.admission.len();
                self.abandon(&uid, Operation::Update, &next, Some(&current), count)
                    .await;
            }
            // Somebody wrote in between (a failed compare): start over from their write.
            result?;
        }
    }

    /// Objects that a terminating state keeps after their finalizers are gone: graceful pods
    /// wait for the kubelet, namespaces for their contents.
    fn kept_while_terminating(&self, resource: &Resource, object: &Value) -> bool {
        match (resource.group, resource.kind) {
            ("", "Namespace") => true,
            ("", "Pod") => {
                self.config.max_pod_grace.is_some()
                    && object
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                        > 0
            }
            _ => false,
        }
    }

    /// The stored object an update produces: system metadata kept, and only the part the
    /// endpoint may change taken from `desired`.
    fn merge_update(
        &self,
        resource: &Resource,
        current: &Value,
        desired: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let mut next = match part {
            Part::Status => {
                let mut next = current.clone();
                next["status"] = desired.get("status").cloned().unwrap_or(json!({}));
                next
            }
            Part::Main => {
                let mut next = desired;
                if resource.status {
                    match current.get("status") {
                        Some(status) => next["status"] = status.clone(),
                        None => {
                            if let Value::Object(map) = &mut next {
                                map.remove("status");
                            }
                        }
                    }
                }
                next
            }
        };
        let current_meta = current.get("metadata").cloned().unwrap_or(json!({}));
        let name = meta_str(current, "name").to_string();
        let meta = meta_mut(&mut next);
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match current_meta.get(field) {
                Some(value) => meta.insert(field.into(), value.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert(
            "resourceVersion".into(),
            current_meta["resourceVersion"].clone(),
        );
        meta.remove("managedFields");
        meta.remove("selfLink");
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            let before = object::finalizers(current);
            let added: Vec<String> = object::finalizers(&next)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                let list = added
                    .iter()
                    .map(|f| format!("{f:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ApiError::invalid(
                    resource.group,
                    resource.kind,
                    &name,
                    vec![Cause {
                        reason: "FieldValueForbidden",
                        field: "metadata.finalizers".into(),
                        message: format!(
                            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{list}}}"
                        ),
                    }],
                ));
            }
        }
        if part == Part::Main && object::generation_changes(resource, current, &next) {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut next).insert("generation".into(), json!(generation + 1));
        }
        if resource.kind == "Namespace" {
            next["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        Ok(next)
    }

    /// PUT: replaces an object (or its status) with the body.
    pub async fn replace(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        part: Part,
        body: Value,
        options: WriteOptions,
    ) -> Result<Written, ApiError> {
        let (desired, warnings) = object::decode(resource, body, options.validation)?;
        let body_name = meta_str(&desired, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta_str(&desired, "namespace");
        if resource.namespaced && !body_ns.is_empty() && Some(body_ns) != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut written = self
            .update_with(resource, namespace, name, part, options, |_| {
                Ok((desired.clone(), Vec::new()))
            })
            .await?;
        written.warnings = warnings;
        Ok(written)
    }

    /// PATCH: applies a merge, JSON or strategic merge patch to the current object.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        part: Part,
        patch_type: PatchType,
        patch: Value,
        options: WriteOptions,
    ) -> Result<Written, ApiError> {
        let json_patch: Option<json_patch::Patch> = match patch_type {
            PatchType::Json => Some(serde_json::from_value(patch.clone()).map_err(|e| {
                ApiError::bad_request(format!(
                    "the JSON patch is not a list of RFC 6902 operations: {e}"
                ))
            })?),
            _ => None,
        };
        if patch_type != PatchType::Json && !patch.is_object() {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        self.update_with(resource, namespace, name, part, options, |current| {
            let patched = match patch_type {
                PatchType::Merge => {
                    let mut doc = current.clone();
                    json_patch::merge(&mut doc, &patch);
                    doc
                }
                PatchType::Json => {
                    let mut doc = current.clone();
                    json_patch::patch(&mut doc, json_patch.as_ref().expect("parsed above"))
                        .map_err(|e| {
                            ApiError::invalid(
                                resource.group,
                                resource.kind,
                                name,
                                vec![Cause {
                                    reason: "FieldValueInvalid",
                                    field: String::new(),
                                    message: format!("the JSON patch could not be applied: {e}"),
                                }],
                            )
                        })?;
                    doc
                }
                PatchType::Strategic => {
                    crate::smp::apply(current, &patch, resource.kind).map_err(|e| {
                        ApiError::bad_request(format!(
                            "the strategic merge patch could not be applied: {e}"
                        ))
                    })?
                }
            };
            let (desired, warnings) = object::decode(resource, patched, options.validation)?;
            Ok((desired, warnings))
        })
        .await
    }

    /// DELETE of one object.
    pub async fn delete(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        if resource.kind == "Namespace" && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            ))
            .with_cause_details("namespaces", name));
        }
        let key = self.key(resource, namespace, name);
        loop {
            let (kv, _) = self.storage.get(&key).await?;
            let Some(kv) = kv else {
                return Err(ApiError::not_found(resource.group, resource.plural, name));
            };
            let current = Self::decode_kv(resource, &kv)?;
            if let Some(uid) = options.uid.as_deref()
                && uid != meta_str(&current, "uid")
            {
                return Err(ApiError::conflict_with(
                    resource.group,
                    resource.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&current, "uid")
                    ),
                ));
            }
            if let Some(rv) = options.resource_version.as_deref()
                && rv != meta_str(&current, "resourceVersion")
            {
                return Err(ApiError::conflict_with(
                    resource.group,
                    resource.plural,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&current, "resourceVersion")
                    ),
                ));
            }
            let grace = self.grace_period(resource, &current, options);
            let finalizer = options.propagation.and_then(Propagation::finalizer);
            let keep = !object::finalizers(&current).is_empty()
                || resource.kind == "Namespace"
                || grace > 0
                || finalizer.is_some();
            if keep {
                let mut next = current.clone();
                let starting = current.pointer("/metadata/deletionTimestamp").is_none();
                // An object already going only gains the finalizer its propagation asks for.
                if let Some(finalizer) = finalizer
                    && !object::finalizers(&current).iter().any(|f| f == finalizer)
                {
                    let meta = meta_mut(&mut next);
                    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                    if let Some(list) = list.as_array_mut() {
                        list.push(json!(finalizer));
                    }
                } else if !starting {
                    return Ok(current);
                }
                if starting {
                    let meta = meta_mut(&mut next);
                    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                    let at = jiff::Timestamp::from_second(at.as_second()).expect("a valid time");
                    meta.insert("deletionTimestamp".into(), json!(at.to_string()));
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    if resource.kind == "Namespace" {
                        next["status"]["phase"] = json!("Terminating");
                    }
                }
                if options.dry_run {
                    return Ok(next);
                }
                match self
                    .storage
                    .update(&key, Self::encode(resource, &next), kv.mod_revision)
                    .await?
                {
                    Cas::Done(revision) => {
                        if starting && resource.kind == "Namespace" {
                            self.spawn_namespace_cleanup(name.to_string());
                        }
                        return Ok(object::with_revision(next, revision));
                    }
                    Cas::Failed(_) => continue,
                }
            }
            if options.dry_run {
                return Ok(current);
            }
            match self.storage.delete(&key, kv.mod_revision).await? {
                Cas::Done(_) => return Ok(current),
                Cas::Failed(_) => continue,
            }
        }
    }

    /// Seconds a delete waits for: only pods, only while something plays the kubelet, at most
    /// `max_pod_grace`.
    fn grace_period(&self, resource: &Resource, current: &Value, options: &DeleteOptions) -> i64 {
        let Some(cap) = self.config.max_pod_grace else {
            return 0;
        };
        if !(resource.group.is_empty() && resource.kind == "Pod") {
            return 0;
        }
        let spec = current
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let grace = options.grace_period_seconds.unwrap_or(spec).max(0);
        // A pod never scheduled has no kubelet to wait for, and a finished one nothing left
        // to stop (upstream's CheckGracefulDelete).
        let unscheduled = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty();
        let finished = matches!(
            current.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        if unscheduled || finished {
            return 0;
        }
        let cap =
            i64::try_from(cap.as_secs() + u64::from(cap.subsec_nanos() > 0)).unwrap_or(i64::MAX);
        grace.min(cap)
    }

    /// DELETE of a collection: every matching object, returned as deleted.
    pub async fn delete_collection(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        list: &ListOptions,
        options: &DeleteOptions,
    ) -> Result<ListResult, ApiError> {
        let listed = self.list(resource, namespace, list).await?;
        let mut deleted = Vec::new();
        for item in &listed.items {
            let ns = meta_str(item, "namespace");
            let ns = if resource.namespaced { Some(ns) } else { None };
            match self
                .delete(resource, ns, meta_str(item, "name"), options)
                .await
            {
                Ok(object) => deleted.push(object),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ListResult {
            items: deleted,
            revision: listed.revision,
            continue_token: None,
        })
    }

    /// Removes a terminating namespace's contents, then the namespace, as the namespace
    /// controller does.
    fn spawn_namespace_cleanup(&self, namespace: String) {
        let registry = self.clone();
        tokio::spawn(async move {
            loop {
                match registry.clean_namespace(&namespace).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(namespace, error = %e, "namespace cleanup failed; retrying")
                    }
                }
                tokio::time::sleep(registry.config.namespace_cleanup_interval).await;
            }
        });
    }

    /// One pass: deletes what is left; true once the namespace itself is gone.
    async fn clean_namespace(&self, namespace: &str) -> Result<bool, ApiError> {
        let mut remaining = 0;
        // Each store once: events.k8s.io events are the core ones.
        let stores = RESOURCES
            .iter()
            .enumerate()
            .filter(|(i, r)| RESOURCES.iter().position(|o| o.storage == r.storage) == Some(*i));
        for (_, resource) in stores.filter(|(_, r)| r.namespaced) {
            let listed = self
                .list(resource, Some(namespace), &ListOptions::default())
                .await?;
            for item in listed.items {
                remaining += 1;
                if item.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                match self
                    .delete(
                        resource,
                        Some(namespace),
                        meta_str(&item, "name"),
                        &DeleteOptions::default(),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if remaining > 0 {
            return Ok(false);
        }
        let ns = crate::resource::find("", "v1", "namespaces").expect("namespaces are served");
        let key = self.key(ns, None, namespace);
        let (kv, _) = self.storage.get(&key).await?;
        let Some(kv) = kv else { return Ok(true) };
        let current = Self::decode_kv(ns, &kv)?;
        if !object::finalizers(&current).is_empty() {
            return Ok(false);
        }
        Ok(matches!(
            self.storage.delete(&key, kv.mod_revision).await?,
            Cas::Done(_)
        ))
    }

    /// LIST: matching objects at one revision, a page at a time.
    pub async fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let prefix = self.collection_key(resource, namespace);
        let (mut start, mut revision) = match &options.continue_token {
            Some(token) => {
                let token = decode_continue(token)?;
                (format!("{prefix}{}", token.start), Some(token.rv))
            }
            None => (String::new(), options.exact_revision),
        };
        let single_key = !resource.namespaced || namespace.is_some();
        if let Some(name) = options.fields.name()
            && single_key
            && options.continue_token.is_none()
            && revision.is_none()
        {
            // One key, not a scan.
            let (kv, at) = self.storage.get(&format!("{prefix}{name}")).await?;
            let mut items = Vec::new();
            if let Some(kv) = kv {
                let object = Self::decode_kv(resource, &kv)?;
                if self.matches(&object, options) {
                    items.push(object);
                }
            }
            return Ok(ListResult {
                items,
                revision: at,
                continue_token: None,
            });
        }
        let mut items = Vec::new();
        loop {
            let remaining = options.limit.map(|l| l.saturating_sub(items.len()).max(1));
            let page = self
                .storage
                .range(&prefix, &start, revision, remaining)
                .await?;
            let at = page.revision;
            revision = Some(at);
            for kv in &page.kvs {
                start = format!("{}\0", kv.key);
                let object = Self::decode_kv(resource, kv)?;
                if self.matches(&object, options) {
                    items.push(object);
                }
            }
            if !page.more || page.kvs.is_empty() {
                return Ok(ListResult {
                    items,
                    revision: at,
                    continue_token: None,
                });
            }
            if options.limit.is_some_and(|l| items.len() >= l) {
                let continue_token = Some(encode_continue(at, &start[prefix.len()..]));
                return Ok(ListResult {
                    items,
                    revision: at,
                    continue_token,
                });
            }
        }
    }

    fn matches(&self, object: &Value, options: &ListOptions) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        let empty = serde_json::Map::new();
        options.labels.matches(labels.unwrap_or(&empty)) && options.fields.matches(object)
    }
}

fn encode_continue(revision: u64, start: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: revision,
        start: start.into(),
    };
    base64::engine::general_purpose::URL_SAFE
        .encode(serde_json::to_vec(&token).expect("serializes"))
}

fn decode_continue(token: &str) -> Result<ContinueToken, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: the token was not produced by this server's list; drop it and list again",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.v != "meta.k8s.io/v1" || token.start.contains("..") {
        return Err(bad());
    }
    Ok(token)
}

/// The Status a denial becomes.
/// How one admission run goes: for real or as a dry run, and whether what the admissions
/// returned is validated (not yet, when they run before the object is named).
#[derive(Debug, Clone, Copy)]
struct AdmitRun {
    dry_run: bool,
    validate: bool,
}

fn denied(resource: &Resource, object: &Value, denial: crate::admission::Denial) -> ApiError {
    let name = meta_str(object, "name");
    let reason: &'static str = match (denial.reason.as_str(), denial.code) {
        ("Invalid", _) | ("", 422) => "Invalid",
        ("Forbidden", _) | ("", 403) => "Forbidden",
        ("BadRequest", _) | ("", 400) => "BadRequest",
        ("Conflict", _) | ("", 409) => "Conflict",
        ("AlreadyExists", _) => "AlreadyExists",
        ("ServiceUnavailable", _) | ("", 503) => "ServiceUnavailable",
        _ => "InternalError",
    };
    // A field error (`spec.clusterIPs[0]: Invalid value: ...`) reads as upstream's own
    // validation; any other denial (a webhook's) is passed on as it was given.
    let field_error = denial
        .field
        .as_deref()
        .is_some_and(|f| !f.is_empty() && denial.message.starts_with(f));
    if reason == "Invalid" && field_error {
        let field = denial.field.clone().unwrap_or_default();
        let mut e = ApiError::invalid(
            resource.group,
            resource.kind,
            name,
            vec![Cause {
                reason: "FieldValueInvalid",
                field,
                message: denial.message.clone(),
            }],
        );
        e.code = if denial.code == 0 { 422 } else { denial.code };
        return e;
    }
    let e = ApiError::new(
        if denial.code == 0 { 500 } else { denial.code },
        reason,
        denial.message,
    );
    // A webhook's details (its field causes) go on as given, as kube-apiserver passes them:
    // kubectl then prints `The Service "web" is invalid: <field>: <cause>` from them.
    if let Some(details) = denial.details {
        return e.with_details(details);
    }
    // No details: kubectl then prints the denial's message as it is ("Error from server
    // (Invalid): ... admission webhook ... denied the request: ...") rather than a list of
    // field causes the webhook may not have spelled out.
    e
}

impl ApiError {
    fn with_cause_details(mut self, kind: &str, name: &str) -> ApiError {
        self.details = Some(json!({"name": name, "kind": kind}));
        self
    }
}
