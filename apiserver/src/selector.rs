//! Field selectors: parsing the `fieldSelector=` query parameter the way k8s.io/apimachinery
//! does (same grammar, same error texts), matching it against stored JSON objects, and the
//! per-kind lists of field labels upstream accepts. Label selectors are [`cache::selector`]'s,
//! shared with the controllers.

use std::fmt;

use serde_json::Value;

pub use cache::selector::LabelSelector;

/// A parsed field selector: the AND of `field=value` / `field!=value` terms. The default (no
/// terms) matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// Sorted like upstream (by the terms' text).
    terms: Vec<FieldTerm>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    value: String,
    negated: bool,
}

impl FieldSelector {
    /// Parses `fieldSelector=`: comma-separated `f=v`, `f==v`, `f!=v`. Values may escape `\,`,
    /// `\=` and `\\` like upstream. `supported` lists the field labels the resource accepts;
    /// any other gives `field label not supported: {f}`.
    pub fn parse(s: &str, supported: &[&str]) -> Result<FieldSelector, String> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut terms = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let Some((lhs, op, rhs)) = split_term(part) else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let value = unescape_value(rhs)?;
            terms.push(FieldTerm {
                field: lhs.to_string(),
                value,
                negated: op == "!=",
            });
        }
        // Upstream converts field labels after the whole selector parsed.
        if let Some(t) = terms
            .iter()
            .find(|t| !supported.contains(&t.field.as_str()))
        {
            return Err(format!("field label not supported: {}", t.field));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether `object` satisfies every term. Field paths are dotted (`metadata.name`,
    /// `spec.nodeName`, `status.phase`, `type`); a missing field is the empty string (`false`
    /// for the boolean fields `spec.hostNetwork` and `spec.unschedulable`), a boolean renders
    /// as `true`/`false`.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms
            .iter()
            .all(|t| (field_value(object, &t.field) == t.value) != t.negated)
    }

    /// True when the selector restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The name pinned by a `metadata.name=X` (or `==`) term, so a list can read one key.
    pub fn name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| !t.negated && t.field == "metadata.name")
            .map(|t| t.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    /// The canonical form, values re-escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if t.negated { "!=" } else { "=" };
            let escaped = t
                .value
                .replace('\\', "\\\\")
                .replace(',', "\\,")
                .replace('=', "\\=");
            write!(f, "{}{op}{escaped}", t.field)?;
        }
        Ok(())
    }
}

/// Splits on commas not preceded by a backslash escape (upstream's `splitTerms`).
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits a term at its first operator (`!=`, `==`, `=`, tried in that order at each position).
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], op, value));
            }
        }
    }
    None
}

/// Upstream's `fields.UnescapeValue`.
fn unescape_value(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    ));
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            // Upstream prints the rune with %v, i.e. as its number.
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                ));
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err("invalid field selector: invalid escape sequence: \\".to_string());
    }
    Ok(out)
}

/// The value of a field label on `object`, as upstream's per-kind `GetAttrs` would give it.
fn field_value(object: &Value, field: &str) -> String {
    let events_api = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("events.k8s.io/"));
    match field {
        "spec.hostNetwork" | "spec.unschedulable" => {
            return text_at(object, field).unwrap_or_else(|| "false".to_string());
        }
        "status.podIP" => {
            if let Some(ip) = object
                .pointer("/status/podIPs/0/ip")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                return ip.to_string();
            }
        }
        "source" => {
            let (source, controller) = if events_api {
                ("deprecatedSource.component", "reportingController")
            } else {
                ("source.component", "reportingComponent")
            };
            return text_at(object, source)
                .filter(|s| !s.is_empty())
                .or_else(|| text_at(object, controller))
                .unwrap_or_default();
        }
        "reportingComponent" if events_api => {
            return text_at(object, "reportingController").unwrap_or_default();
        }
        _ => {}
    }
    if events_api && let Some(rest) = field.strip_prefix("involvedObject.") {
        return text_at(object, &format!("regarding.{rest}")).unwrap_or_default();
    }
    text_at(object, field).unwrap_or_default()
}

/// The scalar at a dotted path as text; `None` when missing or null.
fn text_at(object: &Value, path: &str) -> Option<String> {
    let mut cur = object;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

const META_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const NODE_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "spec.unschedulable"];
const EVENT_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];
const NAMESPACE_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "status.phase"];
const SERVICE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.clusterIP",
    "spec.type",
];

/// The field labels upstream accepts in a `fieldSelector` for `kind`: always `metadata.name`
/// and `metadata.namespace`, plus the kind's own (Pod, Node, Event, Namespace, Service).
pub fn supported_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => POD_FIELDS,
        "Node" => NODE_FIELDS,
        "Event" => EVENT_FIELDS,
        "Namespace" => NAMESPACE_FIELDS,
        "Service" => SERVICE_FIELDS,
        _ => META_FIELDS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fsel(s: &str) -> FieldSelector {
        FieldSelector::parse(s, supported_fields("Pod"))
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn field_selectors_match_dotted_paths() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"nodeName": "node-a", "hostNetwork": true},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}]}
        });
        assert!(fsel("").is_empty());
        assert!(fsel("").matches(&pod));
        assert!(fsel("metadata.name=web-1").matches(&pod));
        assert!(fsel("metadata.name==web-1,status.phase=Running").matches(&pod));
        assert!(!fsel("status.phase!=Running").matches(&pod));
        assert!(fsel("spec.nodeName!=node-b").matches(&pod));
        assert!(fsel("spec.hostNetwork=true").matches(&pod));
        assert!(fsel("status.podIP=10.0.0.5").matches(&pod));
        assert!(
            fsel("status.nominatedNodeName=").matches(&pod),
            "missing is empty"
        );
        assert!(!fsel("status.nominatedNodeName!=").matches(&pod));
        let plain = json!({"metadata": {"name": "p"}});
        assert!(
            fsel("spec.hostNetwork=false").matches(&plain),
            "an unset bool is false"
        );
    }

    #[test]
    fn a_field_selector_pins_a_name_only_by_equality() {
        assert_eq!(fsel("metadata.name=web-1").name(), Some("web-1"));
        assert_eq!(
            fsel("status.phase=Running,metadata.name==x").name(),
            Some("x")
        );
        assert_eq!(fsel("metadata.name!=web-1").name(), None);
        assert_eq!(fsel("status.phase=Running").name(), None);
    }

    #[test]
    fn unsupported_field_labels_are_refused() {
        assert_eq!(
            FieldSelector::parse("spec.nodeName=a", supported_fields("Service")).unwrap_err(),
            "field label not supported: spec.nodeName"
        );
        assert_eq!(
            FieldSelector::parse("metadata.labels=a", supported_fields("Lease")).unwrap_err(),
            "field label not supported: metadata.labels"
        );
        assert!(FieldSelector::parse("spec.type=NodePort", supported_fields("Service")).is_ok());
        assert!(FieldSelector::parse("spec.unschedulable=true", supported_fields("Node")).is_ok());
    }

    #[test]
    fn bad_field_selector_syntax_is_refused() {
        let err = |s: &str| FieldSelector::parse(s, supported_fields("Pod")).unwrap_err();
        assert_eq!(
            err("metadata.name"),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            err("metadata.name=a=b"),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            err("metadata.name=a\\x"),
            "invalid field selector: invalid escape sequence: \\x"
        );
        assert_eq!(
            err("metadata.name=a\\"),
            "invalid field selector: invalid escape sequence: \\"
        );
    }

    #[test]
    fn escaped_field_values_are_unescaped() {
        let s = fsel("metadata.name=a\\,b\\=c\\\\d,status.phase=Running");
        assert_eq!(s.name(), Some("a,b=c\\d"));
        assert!(
            s.matches(&json!({"metadata": {"name": "a,b=c\\d"}, "status": {"phase": "Running"}}))
        );
        assert_eq!(
            s.to_string(),
            "metadata.name=a\\,b\\=c\\\\d,status.phase=Running"
        );
    }

    #[test]
    fn event_field_labels_read_either_event_api() {
        let fields = supported_fields("Event");
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "involvedObject": {"kind": "Pod", "name": "web-1"},
            "reason": "Started", "type": "Normal",
            "source": {"component": "kubelet"}
        });
        let s = FieldSelector::parse(
            "involvedObject.kind=Pod,involvedObject.name=web-1,source=kubelet,type=Normal",
            fields,
        )
        .unwrap();
        assert!(s.matches(&core));
        let new = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "regarding": {"kind": "Pod", "name": "web-1"},
            "reason": "Started", "type": "Normal",
            "reportingController": "kubelet"
        });
        assert!(s.matches(&new));
        let s = FieldSelector::parse("reportingComponent=kubelet", fields).unwrap();
        assert!(s.matches(&new));
    }

    #[test]
    fn supported_fields_follow_upstream_kinds() {
        assert_eq!(
            supported_fields("Secret"),
            &["metadata.name", "metadata.namespace"]
        );
        assert!(supported_fields("Pod").contains(&"spec.hostNetwork"));
        assert!(supported_fields("Node").contains(&"spec.unschedulable"));
        assert!(supported_fields("Namespace").contains(&"status.phase"));
        assert!(supported_fields("Service").contains(&"spec.clusterIP"));
        assert!(supported_fields("Event").contains(&"involvedObject.uid"));
    }
}
