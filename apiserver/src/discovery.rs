//! Discovery documents: `/version`, legacy `/api` and `/apis`, each group-version's
//! `APIResourceList`, and the minimal OpenAPI v3 documents that let kubectl find server-side
//! field validation and patch support (so `kubectl create/apply` work with default validation).

use serde_json::{Value, json};

use crate::resource::{RESOURCES, Resource, groups};

/// The Kubernetes version the server reports.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "37",
        "emulationMajor": "1",
        "emulationMinor": "37",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": "v1.37.2+svcplane",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.26.8",
        "compiler": "gc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`: the core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`: the named groups.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group_document).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn group_document(group: &str) -> Value {
    let version = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [version.clone()], "preferredVersion": version})
}

/// `/apis/<group>`: one group.
pub fn api_group(group: &str) -> Option<Value> {
    groups().contains(&group).then(|| {
        let mut doc = group_document(group);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        doc
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/api/v1` or `/apis/<group>/<version>`: the resources of one group-version.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in served {
        // Namespaces are deleted one at a time, as upstream.
        let verbs: Vec<&str> = VERBS
            .iter()
            .copied()
            .filter(|v| !(r.kind == "Namespace" && *v == "deletecollection"))
            .collect();
        let mut doc = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs,
        });
        if !r.short_names.is_empty() {
            doc["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            doc["categories"] = json!(r.categories);
        }
        resources.push(doc);
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// The paths of the OpenAPI v3 documents, keyed as upstream (`api/v1`, `apis/<g>/<v>`).
fn openapi_paths() -> Vec<String> {
    let mut paths = vec!["api/v1".to_string()];
    paths.extend(groups().into_iter().map(|g| format!("apis/{g}/v1")));
    paths
}

/// `/openapi/v3`: where each group-version's document is.
pub fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    for path in openapi_paths() {
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", openapi_hash(&path))}),
        );
    }
    json!({"paths": paths})
}

fn openapi_hash(path: &str) -> String {
    // Stable per build and path; kubectl only uses it as a cache key.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in path.bytes().chain(env!("CARGO_PKG_VERSION").bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3/<path>`: one patch operation per kind, declaring `fieldValidation` and the
/// patch types, which is what kubectl's query-parameter verifier looks for.
pub fn openapi_document(path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", "v1"] => ("", "v1"),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for r in served {
        let item = if r.namespaced {
            format!(
                "{}/namespaces/{{namespace}}/{}/{{name}}",
                r.base_path(),
                r.plural
            )
        } else {
            format!("{}/{}/{{name}}", r.base_path(), r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let parameters = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        ]);
        let patch = json!({
            "x-kubernetes-group-version-kind": gvk,
            "x-kubernetes-action": "patch",
            "parameters": parameters,
            "requestBody": {"content": {
                "application/json-patch+json": {},
                "application/merge-patch+json": {},
                "application/strategic-merge-patch+json": {},
            }},
            "responses": {"200": {"description": "OK"}},
        });
        let put = json!({
            "x-kubernetes-group-version-kind": gvk,
            "x-kubernetes-action": "put",
            "parameters": parameters,
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(item, json!({"patch": patch, "put": put}));
        let collection = if r.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", r.base_path(), r.plural)
        } else {
            format!("{}/{}", r.base_path(), r.plural)
        };
        let post = json!({
            "x-kubernetes-group-version-kind": gvk,
            "x-kubernetes-action": "post",
            "parameters": parameters,
            "responses": {"201": {"description": "Created"}},
        });
        paths.insert(collection, json!({"post": post}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.2"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_list_has_status_subresources_and_short_names() {
        let doc = resource_list("", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "namespaces",
                "namespaces/status",
                "services",
                "services/status",
                "endpoints",
                "pods",
                "pods/status",
                "nodes",
                "nodes/status",
                "events"
            ]
        );
        assert_eq!(doc["resources"][2]["shortNames"], json!(["svc"]));
        assert!(resource_list("apps", "v1").is_none());
    }

    #[test]
    fn each_openapi_document_declares_field_validation_on_patch() {
        let root = openapi_root();
        assert!(
            root["paths"]["apis/discovery.k8s.io/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/discovery.k8s.io/v1?hash=")
        );
        let doc = openapi_document("api/v1").unwrap();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Service");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
    }
}
