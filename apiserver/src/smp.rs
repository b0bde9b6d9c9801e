//! Server-side strategic merge patch: the served kinds' merge-key table and the `$` directives.
//!
//! The rules follow upstream apimachinery `strategicpatch` as the API server runs it (parallel
//! deletion lists merged, unmatched nulls ignored), with two deliberate simplifications of list
//! order: elements of a merge list keep the original order with new ones appended, and
//! `$setElementOrder` puts the listed elements first and the rest after them. Maps always merge;
//! a list not in the table is atomic. Directives never reach the result, not even inside values
//! the patch adds.

use serde_json::{Map, Value};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Why a strategic merge patch could not be applied. Every `path` is the dotted field path from
/// the object root, list elements collapsed (e.g. `spec.containers.env`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SmpError {
    #[error("a strategic merge patch must be a JSON object")]
    PatchNotObject,
    #[error("an element of the merge list `{path}` lacks its merge key `{key}`")]
    MissingMergeKey { path: String, key: String },
    #[error("an element of the merge list `{path}` must be {expected}")]
    BadListElement {
        path: String,
        expected: &'static str,
    },
    #[error(
        "`$patch` at `{path}` has the unknown value {value} (expected merge, replace or delete)"
    )]
    UnknownPatchDirective { path: String, value: String },
    #[error("`{directive}` at `{path}` must be {expected}")]
    BadDirectiveValue {
        path: String,
        directive: String,
        expected: &'static str,
    },
    #[error("`{directive}` at `{path}` names a field that is not a list")]
    DirectiveTargetNotList { path: String, directive: String },
    #[error("the patch sets `{path}`, which its `$retainKeys` does not list")]
    NotInRetainKeys { path: String },
}

/// Applies a strategic merge patch (`application/strategic-merge-patch+json`) to `original`,
/// for an object of `kind` (core/v1 "Service", "Pod", "Node", "Namespace", "Endpoints", "Event";
/// "EndpointSlice", "Lease"; any other kind: ObjectMeta rules only, everything else atomic).
pub fn apply(original: &Value, patch: &Value, kind: &str) -> Result<Value, SmpError> {
    let patch = patch.as_object().ok_or(SmpError::PatchNotObject)?;
    let merger = Merger {
        kind_lists: kind_lists(kind),
    };
    let merged = merger.merge_map(original.as_object(), patch, &[])?;
    // `$patch: delete` at the root leaves nothing of the object, as upstream does.
    Ok(Value::Object(merged.unwrap_or_default()))
}

/// How a list field merges; a list without an entry in the table is atomic (replaced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListStrategy {
    /// `patchStrategy: merge` on scalars: a set union keeping the original order.
    Primitive,
    /// `patchStrategy: merge` with this `patchMergeKey`.
    Keyed(&'static str),
    /// `patchStrategy: merge,retainKeys` with this `patchMergeKey`. The `$retainKeys` directive
    /// itself is honoured in whatever map carries it, as upstream does.
    KeyedRetainKeys(&'static str),
}

use ListStrategy::{Keyed, KeyedRetainKeys, Primitive};

type ListTable = &'static [(&'static str, ListStrategy)];

/// ObjectMeta, shared by every kind.
const OBJECT_META: ListTable = &[
    ("metadata.finalizers", Primitive),
    ("metadata.ownerReferences", Keyed("uid")),
];

const SERVICE: ListTable = &[
    ("spec.ports", Keyed("port")),
    ("status.conditions", Keyed("type")),
];

const POD: ListTable = &[
    ("spec.containers", Keyed("name")),
    ("spec.containers.ports", Keyed("containerPort")),
    ("spec.containers.env", Keyed("name")),
    ("spec.containers.volumeMounts", Keyed("mountPath")),
    ("spec.containers.volumeDevices", Keyed("devicePath")),
    ("spec.initContainers", Keyed("name")),
    ("spec.initContainers.ports", Keyed("containerPort")),
    ("spec.initContainers.env", Keyed("name")),
    ("spec.initContainers.volumeMounts", Keyed("mountPath")),
    ("spec.initContainers.volumeDevices", Keyed("devicePath")),
    ("spec.ephemeralContainers", Keyed("name")),
    ("spec.ephemeralContainers.ports", Keyed("containerPort")),
    ("spec.ephemeralContainers.env", Keyed("name")),
    ("spec.ephemeralContainers.volumeMounts", Keyed("mountPath")),
    (
        "spec.ephemeralContainers.volumeDevices",
        Keyed("devicePath"),
    ),
    ("spec.volumes", KeyedRetainKeys("name")),
    ("spec.imagePullSecrets", Keyed("name")),
    ("spec.hostAliases", Keyed("ip")),
    ("spec.topologySpreadConstraints", Keyed("topologyKey")),
    ("spec.resourceClaims", Keyed("name")),
    ("spec.schedulingGates", Keyed("name")),
    ("status.conditions", Keyed("type")),
    ("status.podIPs", Keyed("ip")),
    ("status.hostIPs", Keyed("ip")),
];

const NODE: ListTable = &[
    ("spec.podCIDRs", Primitive),
    ("status.conditions", Keyed("type")),
    ("status.addresses", Keyed("type")),
];

/// The kind's own merge lists (beyond ObjectMeta's). Endpoints, EndpointSlice, Lease, Namespace,
/// Event and unknown kinds have none, so for them SMP is a JSON merge patch plus ObjectMeta.
fn kind_lists(kind: &str) -> ListTable {
    match kind {
        "Service" => SERVICE,
        "Pod" => POD,
        "Node" => NODE,
        _ => &[],
    }
}

fn dotted(path: &[&str]) -> String {
    if path.is_empty() {
        "(root)".to_owned()
    } else {
        path.join(".")
    }
}

fn child<'a>(path: &[&'a str], key: &'a str) -> Vec<&'a str> {
    let mut child = Vec::with_capacity(path.len() + 1);
    child.extend_from_slice(path);
    child.push(key);
    child
}

struct Merger {
    kind_lists: ListTable,
}

impl Merger {
    /// The strategy of the list at `path`, or `None` for an atomic list.
    fn list_strategy(&self, path: &[&str]) -> Option<ListStrategy> {
        OBJECT_META
            .iter()
            .chain(self.kind_lists)
            .find(|(table_path, _)| table_path.split('.').eq(path.iter().copied()))
            .map(|&(_, strategy)| strategy)
    }

    /// Merges `patch` into `original` (absent: a new map); `None` means `$patch: delete`.
    fn merge_map(
        &self,
        original: Option<&Map<String, Value>>,
        patch: &Map<String, Value>,
        path: &[&str],
    ) -> Result<Option<Map<String, Value>>, SmpError> {
        let base = match patch.get(PATCH) {
            None => original,
            Some(directive) => match directive.as_str() {
                Some("merge") => original,
                Some("replace") => None,
                Some("delete") => return Ok(None),
                _ => {
                    return Err(SmpError::UnknownPatchDirective {
                        path: dotted(path),
                        value: directive.to_string(),
                    });
                }
            },
        };
        let mut out = base.cloned().unwrap_or_default();

        if let Some(retain) = patch.get(RETAIN_KEYS) {
            let keep = retain
                .as_array()
                .and_then(|names| names.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| SmpError::BadDirectiveValue {
                    path: dotted(path),
                    directive: RETAIN_KEYS.to_owned(),
                    expected: "a list of field names",
                })?;
            if let Some((key, _)) = patch.iter().find(|(key, value)| {
                !key.starts_with('$') && !value.is_null() && !keep.contains(&key.as_str())
            }) {
                return Err(SmpError::NotInRetainKeys {
                    path: dotted(&child(path, key)),
                });
            }
            out.retain(|key, _| keep.contains(&key.as_str()));
        }

        let mut orders = Vec::new();
        let mut deletions = Vec::new();
        for (key, value) in patch {
            if key == PATCH || key == RETAIN_KEYS {
                continue;
            }
            if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
                orders.push((key, field, directive_list(value, key, path)?));
                continue;
            }
            if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
                deletions.push((key, field, directive_list(value, key, path)?));
                continue;
            }
            if value.is_null() {
                out.remove(key);
                continue;
            }
            match self.merge_value(out.get(key), value, &child(path, key))? {
                Some(merged) => {
                    out.insert(key.clone(), merged);
                }
                None => {
                    out.remove(key);
                }
            }
        }

        for (directive, field, values) in deletions {
            if let Some(list) = target_list(&mut out, field, directive, path)? {
                list.retain(|element| !values.contains(element));
            }
        }
        for (directive, field, order) in orders {
            let field_path = child(path, field);
            let key = match self.list_strategy(&field_path) {
                Some(Keyed(key) | KeyedRetainKeys(key)) => Some(key),
                Some(Primitive) | None => None,
            };
            if let Some(list) = target_list(&mut out, field, directive, path)? {
                *list = reorder(std::mem::take(list), order, key, &field_path)?;
            }
        }
        Ok(Some(out))
    }

    /// Merges one patch value into the original's value at `path`; `None` deletes the field.
    fn merge_value(
        &self,
        original: Option<&Value>,
        patch: &Value,
        path: &[&str],
    ) -> Result<Option<Value>, SmpError> {
        match patch {
            Value::Object(patch) => Ok(self
                .merge_map(original.and_then(Value::as_object), patch, path)?
                .map(Value::Object)),
            Value::Array(patch) => {
                let original = original
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice);
                Ok(Some(Value::Array(self.merge_list(original, patch, path)?)))
            }
            scalar => Ok(Some(scalar.clone())),
        }
    }

    fn merge_list(
        &self,
        original: &[Value],
        patch: &[Value],
        path: &[&str],
    ) -> Result<Vec<Value>, SmpError> {
        match self.list_strategy(path) {
            // Atomic: the patch's list cleaned of directives (`$patch: delete` drops an element).
            None => Ok(patch
                .iter()
                .map(|element| self.merge_value(None, element, path))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect()),
            Some(Primitive) => {
                let mut out = original.to_vec();
                for element in patch {
                    if element.is_object() || element.is_array() {
                        return Err(SmpError::BadListElement {
                            path: dotted(path),
                            expected: "a scalar",
                        });
                    }
                    if !out.contains(element) {
                        out.push(element.clone());
                    }
                }
                Ok(out)
            }
            Some(Keyed(key) | KeyedRetainKeys(key)) => {
                self.merge_keyed_list(original, patch, key, path)
            }
        }
    }

    fn merge_keyed_list(
        &self,
        original: &[Value],
        patch: &[Value],
        key: &str,
        path: &[&str],
    ) -> Result<Vec<Value>, SmpError> {
        let missing_key = || SmpError::MissingMergeKey {
            path: dotted(path),
            key: key.to_owned(),
        };
        let mut out = original.to_vec();
        let mut replace = false;
        let mut merges = Vec::with_capacity(patch.len());
        // Special elements first, as upstream: deletions and the replace marker.
        for element in patch {
            let element = element
                .as_object()
                .ok_or_else(|| SmpError::BadListElement {
                    path: dotted(path),
                    expected: "an object",
                })?;
            let Some(directive) = element.get(PATCH) else {
                merges.push(element);
                continue;
            };
            match directive.as_str() {
                Some("merge") => merges.push(element),
                Some("delete") => {
                    let value = element.get(key).ok_or_else(missing_key)?;
                    out.retain(|existing| existing.get(key) != Some(value));
                }
                Some("replace") => replace = true,
                _ => {
                    return Err(SmpError::UnknownPatchDirective {
                        path: dotted(path),
                        value: directive.to_string(),
                    });
                }
            }
        }
        if replace {
            out.clear();
        }
        for element in merges {
            let value = element
                .get(key)
                .filter(|value| !value.is_null())
                .ok_or_else(missing_key)?;
            let position = out
                .iter()
                .position(|existing| existing.get(key) == Some(value));
            let existing = position.and_then(|index| out[index].as_object());
            // Never `None`: an element's `$patch` here is absent or `merge`.
            let Some(merged) = self.merge_map(existing, element, path)? else {
                continue;
            };
            match position {
                Some(index) => out[index] = Value::Object(merged),
                None => out.push(Value::Object(merged)),
            }
        }
        Ok(out)
    }
}

/// The value of a `$setElementOrder/…` or `$deleteFromPrimitiveList/…` directive: a list.
fn directive_list<'p>(
    value: &'p Value,
    directive: &str,
    path: &[&str],
) -> Result<&'p [Value], SmpError> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| SmpError::BadDirectiveValue {
            path: dotted(path),
            directive: directive.to_owned(),
            expected: "a list",
        })
}

/// The list a directive acts on, if the merged map has the field at all.
fn target_list<'m>(
    map: &'m mut Map<String, Value>,
    field: &str,
    directive: &str,
    path: &[&str],
) -> Result<Option<&'m mut Vec<Value>>, SmpError> {
    match map.get_mut(field) {
        None => Ok(None),
        Some(Value::Array(list)) => Ok(Some(list)),
        Some(_) => Err(SmpError::DirectiveTargetNotList {
            path: dotted(path),
            directive: directive.to_owned(),
        }),
    }
}

/// Puts the elements named by `order` first, in that order, and the rest after them in their
/// relative order. With a merge key, `order` holds `{key: value}` objects; otherwise whole values.
fn reorder(
    list: Vec<Value>,
    order: &[Value],
    key: Option<&str>,
    path: &[&str],
) -> Result<Vec<Value>, SmpError> {
    let mut rest: Vec<Option<Value>> = list.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(rest.len());
    for wanted in order {
        let wanted = match key {
            Some(key) => wanted.get(key).ok_or_else(|| SmpError::MissingMergeKey {
                path: dotted(path),
                key: key.to_owned(),
            })?,
            None => wanted,
        };
        let slot = rest.iter_mut().find(|slot| {
            slot.as_ref().is_some_and(|element| match key {
                Some(key) => element.get(key) == Some(wanted),
                None => element == wanted,
            })
        });
        if let Some(element) = slot.and_then(Option::take) {
            out.push(element);
        }
    }
    out.extend(rest.into_iter().flatten());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{SmpError, apply};
    use serde_json::json;

    #[test]
    fn a_port_change_from_kubectl_apply_leaves_exactly_the_new_port() {
        let original = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"port\":80}"}},
            "spec": {"selector": {"app": "web"}, "type": "ClusterIP", "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"], "sessionAffinity": "None",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]},
            "status": {"loadBalancer": {}}
        });
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"port\":81}"}},
            "spec": {"$setElementOrder/ports": [{"port": 81}],
                "ports": [{"port": 81, "protocol": "TCP", "targetPort": 8080}, {"$patch": "delete", "port": 80}]}
        });
        assert_eq!(
            apply(&original, &patch, "Service").unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7",
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"port\":81}"}},
                "spec": {"selector": {"app": "web"}, "type": "ClusterIP", "clusterIP": "10.96.0.10",
                    "clusterIPs": ["10.96.0.10"], "sessionAffinity": "None",
                    "ports": [{"port": 81, "protocol": "TCP", "targetPort": 8080}]},
                "status": {"loadBalancer": {}}
            })
        );
    }

    #[test]
    fn adding_an_env_var_to_one_container_keeps_the_other_containers_and_vars() {
        let original = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "sidecar", "image": "side:1", "env": [{"name": "S", "value": "s"}]}
        ]}});
        let patch = json!({"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "one"}]}]}});
        assert_eq!(
            apply(&original, &patch, "Pod").unwrap(),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "one"}, {"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "side:1", "env": [{"name": "S", "value": "s"}]}
            ]}})
        );
    }

    #[test]
    fn a_null_deletes_a_label_and_leaves_the_others() {
        let original =
            json!({"metadata": {"name": "s", "labels": {"app": "web", "tier": "front"}}});
        let patch = json!({"metadata": {"labels": {"tier": null, "absent": null, "env": "prod"}}});
        assert_eq!(
            apply(&original, &patch, "Service").unwrap(),
            json!({"metadata": {"name": "s", "labels": {"app": "web", "env": "prod"}}})
        );
    }

    #[test]
    fn set_element_order_puts_the_listed_elements_first_and_the_rest_after() {
        let original = json!({"spec": {"containers": [
            {"name": "a", "image": "a"}, {"name": "b", "image": "b"}, {"name": "server-only", "image": "s"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}, {"name": "a"}],
            "containers": [{"name": "c", "image": "c"}, {"name": "a", "image": "a2"}]
        }});
        assert_eq!(
            apply(&original, &patch, "Pod").unwrap(),
            json!({"spec": {"containers": [
                {"name": "c", "image": "c"}, {"name": "b", "image": "b"}, {"name": "a", "image": "a2"},
                {"name": "server-only", "image": "s"}
            ]}})
        );
    }

    #[test]
    fn set_element_order_alone_reorders_a_primitive_list() {
        let original = json!({"spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64"]}});
        let patch = json!({"spec": {"$setElementOrder/podCIDRs": ["fd00::/64", "10.0.0.0/24"]}});
        assert_eq!(
            apply(&original, &patch, "Node").unwrap(),
            json!({"spec": {"podCIDRs": ["fd00::/64", "10.0.0.0/24"]}})
        );
    }

    #[test]
    fn delete_from_primitive_list_removes_finalizers_and_keeps_the_rest() {
        let original = json!({"metadata": {"name": "n", "finalizers": ["a/x", "b/y", "c/z"]}});
        let patch =
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b/y", "never/there"]}});
        assert_eq!(
            apply(&original, &patch, "Namespace").unwrap(),
            json!({"metadata": {"name": "n", "finalizers": ["a/x", "c/z"]}})
        );
    }

    #[test]
    fn finalizers_in_a_patch_are_a_set_union_with_the_original() {
        let original = json!({"metadata": {"name": "n", "finalizers": ["a/x", "b/y"]}});
        let patch = json!({"metadata": {"finalizers": ["b/y", "c/z"]}});
        assert_eq!(
            apply(&original, &patch, "Lease").unwrap(),
            json!({"metadata": {"name": "n", "finalizers": ["a/x", "b/y", "c/z"]}})
        );
    }

    #[test]
    fn retain_keys_on_a_volume_swaps_its_source() {
        let original = json!({"spec": {"volumes": [
            {"name": "data", "emptyDir": {"medium": "Memory"}},
            {"name": "config", "configMap": {"name": "cfg"}}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/volumes": [{"name": "data"}, {"name": "config"}],
            "volumes": [{"$retainKeys": ["hostPath", "name"], "emptyDir": null, "hostPath": {"path": "/data"}, "name": "data"}]
        }});
        assert_eq!(
            apply(&original, &patch, "Pod").unwrap(),
            json!({"spec": {"volumes": [
                {"name": "data", "hostPath": {"path": "/data"}},
                {"name": "config", "configMap": {"name": "cfg"}}
            ]}})
        );
    }

    #[test]
    fn retain_keys_must_list_every_field_the_patch_sets() {
        let original = json!({"spec": {"volumes": [{"name": "data", "emptyDir": {}}]}});
        let patch = json!({"spec": {"volumes": [{"$retainKeys": ["name"], "name": "data", "hostPath": {"path": "/d"}}]}});
        assert_eq!(
            apply(&original, &patch, "Pod"),
            Err(SmpError::NotInRetainKeys {
                path: "spec.volumes.hostPath".to_owned()
            })
        );
    }

    #[test]
    fn patch_replace_on_a_map_replaces_it_with_the_patch_map() {
        let original =
            json!({"spec": {"selector": {"app": "web", "tier": "front"}, "type": "ClusterIP"}});
        let patch = json!({"spec": {"selector": {"$patch": "replace", "app": "api"}}});
        assert_eq!(
            apply(&original, &patch, "Service").unwrap(),
            json!({"spec": {"selector": {"app": "api"}, "type": "ClusterIP"}})
        );
    }

    #[test]
    fn patch_replace_in_a_merge_list_replaces_the_whole_list() {
        let original = json!({"spec": {"containers": [{"name": "app", "image": "app:1", "env": [
            {"name": "A", "value": "1"}, {"name": "B", "value": "2"}
        ]}]}});
        let patch = json!({"spec": {"containers": [{"name": "app", "env": [{"$patch": "replace"}, {"name": "C", "value": "3"}]}]}});
        assert_eq!(
            apply(&original, &patch, "Pod").unwrap(),
            json!({"spec": {"containers": [{"name": "app", "image": "app:1", "env": [{"name": "C", "value": "3"}]}]}})
        );
    }

    #[test]
    fn patch_delete_on_a_map_removes_the_field() {
        let original =
            json!({"metadata": {"name": "s", "labels": {"app": "web"}, "annotations": {"a": "b"}}});
        let patch = json!({"metadata": {"labels": {"$patch": "delete"}}});
        assert_eq!(
            apply(&original, &patch, "Service").unwrap(),
            json!({"metadata": {"name": "s", "annotations": {"a": "b"}}})
        );
    }

    #[test]
    fn service_external_ips_are_atomic_and_replaced_wholesale() {
        let original =
            json!({"spec": {"externalIPs": ["1.1.1.1", "2.2.2.2"], "ports": [{"port": 80}]}});
        let patch = json!({"spec": {"externalIPs": ["3.3.3.3"]}});
        assert_eq!(
            apply(&original, &patch, "Service").unwrap(),
            json!({"spec": {"externalIPs": ["3.3.3.3"], "ports": [{"port": 80}]}})
        );
    }

    #[test]
    fn endpoint_slice_endpoints_are_atomic_and_replaced_wholesale() {
        let original = json!({"addressType": "IPv4", "metadata": {"name": "web-abc"},
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}, {"addresses": ["10.0.0.2"]}],
            "ports": [{"name": "http", "port": 8080}]});
        let patch = json!({"endpoints": [{"addresses": ["10.0.0.3"]}], "ports": [{"port": 9090}]});
        assert_eq!(
            apply(&original, &patch, "EndpointSlice").unwrap(),
            json!({"addressType": "IPv4", "metadata": {"name": "web-abc"},
                "endpoints": [{"addresses": ["10.0.0.3"]}], "ports": [{"port": 9090}]})
        );
    }

    #[test]
    fn endpoints_subsets_are_replaced_like_a_json_merge_patch() {
        let original = json!({"metadata": {"name": "web", "labels": {"a": "1"}},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]});
        let patch = json!({"metadata": {"labels": {"b": "2"}}, "subsets": [{"addresses": [{"ip": "10.0.0.9"}]}]});
        assert_eq!(
            apply(&original, &patch, "Endpoints").unwrap(),
            json!({"metadata": {"name": "web", "labels": {"a": "1", "b": "2"}},
                "subsets": [{"addresses": [{"ip": "10.0.0.9"}]}]})
        );
    }

    #[test]
    fn owner_references_merge_by_uid_on_any_kind() {
        let original = json!({"metadata": {"ownerReferences": [{"uid": "u1", "kind": "A", "name": "a"}]}, "data": {"k": "v"}});
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "u2", "kind": "B", "name": "b"}, {"uid": "u1", "controller": true}]}});
        assert_eq!(
            apply(&original, &patch, "ConfigMap").unwrap(),
            json!({"metadata": {"ownerReferences": [
                {"uid": "u1", "kind": "A", "name": "a", "controller": true}, {"uid": "u2", "kind": "B", "name": "b"}
            ]}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn node_conditions_merge_by_type_and_taints_are_atomic() {
        let original = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}, "status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}
        ]}});
        let patch = json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(
            apply(&original, &patch, "Node").unwrap(),
            json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]}, "status": {"conditions": [
                {"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}
            ]}})
        );
    }

    #[test]
    fn directives_in_values_the_patch_adds_never_reach_the_result() {
        let original =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}});
        let patch = json!({"spec": {"containers": [{"name": "app",
            "$setElementOrder/ports": [{"containerPort": 80}],
            "ports": [{"containerPort": 80, "protocol": "TCP"}, {"$patch": "delete", "containerPort": 81}],
            "resources": {"$patch": "replace", "limits": {"cpu": "1"}, "requests": {"cpu": null}}
        }]}});
        assert_eq!(
            apply(&original, &patch, "Pod").unwrap(),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "1"}, "requests": {}}
            }]}})
        );
    }

    #[test]
    fn a_patch_that_is_not_an_object_is_refused() {
        let original = json!({"metadata": {"name": "s"}});
        assert_eq!(
            apply(&original, &json!([{"op": "add"}]), "Service"),
            Err(SmpError::PatchNotObject)
        );
        assert_eq!(
            apply(&original, &json!(null), "Service"),
            Err(SmpError::PatchNotObject)
        );
    }

    #[test]
    fn a_merge_list_element_without_its_merge_key_is_refused() {
        let original = json!({"spec": {"ports": [{"port": 80}]}});
        let patch = json!({"spec": {"ports": [{"protocol": "UDP"}]}});
        let err = apply(&original, &patch, "Service").unwrap_err();
        assert_eq!(
            err,
            SmpError::MissingMergeKey {
                path: "spec.ports".to_owned(),
                key: "port".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "an element of the merge list `spec.ports` lacks its merge key `port`"
        );
    }

    #[test]
    fn unknown_patch_directives_and_malformed_directive_values_are_refused() {
        let original = json!({"metadata": {"labels": {"a": "b"}, "finalizers": ["x"]}});
        assert_eq!(
            apply(
                &original,
                &json!({"metadata": {"labels": {"$patch": "shred"}}}),
                "Pod"
            ),
            Err(SmpError::UnknownPatchDirective {
                path: "metadata.labels".to_owned(),
                value: "\"shred\"".to_owned()
            })
        );
        assert_eq!(
            apply(
                &original,
                &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "x"}}),
                "Pod"
            ),
            Err(SmpError::BadDirectiveValue {
                path: "metadata".to_owned(),
                directive: "$deleteFromPrimitiveList/finalizers".to_owned(),
                expected: "a list"
            })
        );
    }
}
