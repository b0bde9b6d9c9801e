//! The resource table: every kind the API server serves, with its group, version, plural, scope,
//! short names and subresources. Routing, discovery, OpenAPI and storage keys all read from here.

/// One served resource.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: the main resource ignores `.status`, status ignores the rest.
    pub status: bool,
    /// Where its objects are stored: events.k8s.io events share core events' store, as
    /// upstream, converted on the way in and out ([`Resource::to_storage`]).
    pub storage: &'static str,
}

impl Resource {
    /// `v1` or `discovery.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    pub fn base_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// core/v1 Services: the one kind with defaults beyond the plain ones, upstream's Service
    /// validation and the admission chain.
    pub fn is_service(&self) -> bool {
        self.group.is_empty() && self.kind == "Service"
    }

    /// The warning kube-apiserver sends with every request on a deprecated resource: its
    /// `deprecation.WarningMessage` for the type's lifecycle (core/v1 Endpoints since 1.33).
    pub fn deprecation(&self) -> Option<&'static str> {
        (self.group.is_empty() && self.kind == "Endpoints").then_some(
            "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice",
        )
    }

    /// An object of this resource as it is stored (events.k8s.io events as core ones).
    pub fn to_storage(&self, object: serde_json::Value) -> serde_json::Value {
        if self.group == "events.k8s.io" {
            crate::event_conversion::to_core(object)
        } else {
            object
        }
    }

    /// A stored object as this resource shows it.
    pub fn from_storage(&self, object: serde_json::Value) -> serde_json::Value {
        if self.group == "events.k8s.io" {
            crate::event_conversion::from_core(object)
        } else {
            object
        }
    }

    /// The object kind of this resource's lists.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const fn core(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        categories,
        status,
        storage: plural,
    }
}

/// Every served resource, in discovery order.
pub static RESOURCES: &[Resource] = &[
    core(
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &[],
        true,
    ),
    core(
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        &["all"],
        true,
    ),
    core(
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        &[],
        false,
    ),
    core("pods", "pod", "Pod", true, &["po"], &["all"], true),
    core("nodes", "node", "Node", false, &["no"], &[], true),
    core("events", "event", "Event", true, &["ev"], &[], false),
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status: false,
        storage: "endpointslices",
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status: false,
        storage: "leases",
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        status: false,
        storage: "events",
    },
];

/// The API groups other than core, each with its one version.
pub fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

/// The resource served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a kind (the core one for `Event`).
pub fn by_kind(group: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_group_resources_have_their_paths() {
        let svc = find("", "v1", "services").unwrap();
        assert_eq!(svc.base_path(), "/api/v1");
        assert_eq!(svc.api_version(), "v1");
        let slices = find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        assert_eq!(slices.base_path(), "/apis/discovery.k8s.io/v1");
        assert_eq!(slices.list_kind(), "EndpointSliceList");
        assert_eq!(
            groups(),
            vec!["discovery.k8s.io", "coordination.k8s.io", "events.k8s.io"]
        );
    }
}
