//! One event store behind two APIs: core/v1 Events are stored as they are, and
//! events.k8s.io/v1 Events are converted to and from them at the storage boundary, field for
//! field as kube-apiserver's conversion does (`regarding` is `involvedObject`, `note` is
//! `message`, the `deprecated*` fields are the core ones), so either API sees what the other
//! wrote.

use serde_json::{Map, Value};

/// events.k8s.io/v1 field names and their core/v1 counterparts; the other fields share names.
const RENAMED: [(&str, &str); 6] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// events.k8s.io/v1 `reportingController` is core/v1 `reportingComponent`.
const REPORTING: (&str, &str) = ("reportingController", "reportingComponent");

/// An events.k8s.io/v1 Event as the core/v1 Event it is stored as.
pub fn to_core(event: Value) -> Value {
    convert(event, "v1", true)
}

/// A stored core/v1 Event as events.k8s.io/v1 shows it.
pub fn from_core(event: Value) -> Value {
    convert(event, "events.k8s.io/v1", false)
}

/// Renames fields from events.k8s.io's names to core's (`to_core`) or back.
fn convert(event: Value, api_version: &str, to_core: bool) -> Value {
    let Value::Object(fields) = event else {
        return event;
    };
    let mut out = Map::with_capacity(fields.len());
    for (key, value) in fields {
        let renamed = RENAMED
            .iter()
            .chain(std::iter::once(&REPORTING))
            .map(|&(new, core)| if to_core { (new, core) } else { (core, new) })
            .find(|(from, _)| *from == key)
            .map(|(_, to)| to.to_string());
        let key = match (key.as_str(), renamed) {
            ("apiVersion", _) => {
                out.insert(key, Value::String(api_version.to_string()));
                continue;
            }
            (_, Some(to)) => to,
            _ => key,
        };
        out.insert(key, value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_events_api_event_is_stored_with_core_names_and_read_back_unchanged() {
        let new = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default"},
            "regarding": {"kind": "Service", "name": "web"},
            "note": "Failed to create endpoint", "reason": "FailedToCreateEndpoint",
            "type": "Warning", "reportingController": "endpoint-controller",
            "reportingInstance": "svcplane", "action": "Create",
            "deprecatedSource": {"component": "endpoint-controller"},
            "deprecatedFirstTimestamp": "2026-12-03T10:00:00Z",
            "deprecatedLastTimestamp": "2026-12-03T10:00:05Z",
            "deprecatedCount": 2,
            "eventTime": null,
        });
        let core = to_core(new.clone());
        assert_eq!(
            core,
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "web.1", "namespace": "default"},
                "involvedObject": {"kind": "Service", "name": "web"},
                "message": "Failed to create endpoint", "reason": "FailedToCreateEndpoint",
                "type": "Warning", "reportingComponent": "endpoint-controller",
                "reportingInstance": "svcplane", "action": "Create",
                "source": {"component": "endpoint-controller"},
                "firstTimestamp": "2026-12-03T10:00:00Z",
                "lastTimestamp": "2026-12-03T10:00:05Z",
                "count": 2,
                "eventTime": null,
            })
        );
        assert_eq!(from_core(core), new);
    }

    #[test]
    fn an_object_without_api_version_gets_none() {
        let core = to_core(json!({"note": "n"}));
        assert_eq!(core, json!({"message": "n"}));
    }
}
