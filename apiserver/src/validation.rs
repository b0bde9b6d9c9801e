//! API-side validation with upstream kube-apiserver's messages.
//!
//! Every [`Cause`] carries upstream's `field.Error.Error()` text: `<field>: <Type>: <detail>`, or
//! `<field>: Invalid value: <value>: <detail>` with the value rendered the way Go's `%v`/`%#v`
//! renders it (strings in double quotes, numbers bare, string slices as JSON, `["a","b"]`).
//! The name, label and annotation rules are those of `k8s.io/apimachinery/pkg/util/validation`
//! and `pkg/api/validate/content`; the Service rules are `ValidateService` and
//! `ValidateServiceUpdate` of `pkg/apis/core/validation`, plus the dual-stack checks the
//! upstream registry makes before allocating.
//!
//! Input is the object as it will be stored, after the server's plain defaults and before
//! Service admission allocates anything. So fields that upstream allocates before validating
//! (cluster IPs, IP families, node ports, `healthCheckNodePort`) may be absent without error,
//! and fields upstream defaults but this server may not (`externalTrafficPolicy`,
//! `allocateLoadBalancerNodePorts`, `sessionAffinityConfig`) are checked when present rather
//! than required.
//!
//! Deliberate differences from upstream:
//! - an IP that changes on update is reported with the new value, e.g.
//!   `spec.clusterIPs[0]: Invalid value: "10.0.0.2": may not change once set`; upstream renders
//!   the whole list (`["10.0.0.2"]`). `spec.ipFamilies[i]` is reported the same way;
//! - the cluster IPs are read as upstream's strategy syncs them before validating: `clusterIPs`
//!   when set, otherwise `[clusterIP]`. Only a `clusterIP` that disagrees with a set
//!   `clusterIPs[0]` is reported;
//! - upstream's strategy silently drops type-dependent fields (node ports, cluster IPs, ...) when
//!   `type` changes; here they are validated as sent, so a client must clear them itself.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value};

use crate::error::Cause;

/// Which name rule a kind's metadata.name follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1035 label (Services): lower case alphanumerics and '-', starting with a letter, at
    /// most 63 characters.
    Dns1035Label,
    /// RFC 1123 label (Namespaces): lower case alphanumerics and '-', at most 63 characters.
    Dns1123Label,
    /// RFC 1123 subdomain (everything else): dot-separated labels, at most 253 characters.
    Dns1123Subdomain,
}

/// The name rule of a kind, given as a kind (`Service`), a resource (`services`) or a short
/// name (`svc`), in any case.
pub fn name_rule(kind: &str) -> NameRule {
    match kind.to_ascii_lowercase().as_str() {
        "service" | "services" | "svc" => NameRule::Dns1035Label,
        "namespace" | "namespaces" | "ns" => NameRule::Dns1123Label,
        _ => NameRule::Dns1123Subdomain,
    }
}

/// Validates an object's `metadata` as upstream's `ValidateObjectMetaAccessor` does: `name`
/// (not required when `generateName` is set and the name is still empty, since the server fills
/// it), the `generateName` prefix, `namespace` (a DNS-1123 label) when present, `labels` and
/// `annotations`.
pub fn validate_metadata(kind: &str, meta: &Value) -> Vec<Cause> {
    let mut errs = Errs::default();
    validate_meta_into(&mut errs, name_rule(kind), meta);
    errs.0
}

/// Upstream's `ValidateService` on create (`old` = `None`) and `ValidateServiceUpdate` on update
/// (`old` = the stored Service). Both take whole Service objects; the new object's `metadata`
/// is validated too (with the Service name rule), so a caller need not also call
/// [`validate_metadata`] for Services.
pub fn validate_service(new: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut errs = Errs::default();
    let spec = Spec::of(new);
    if let Some(old) = old {
        let old_spec = Spec::of(old);
        upgrade_downgrade_cluster_ips(&mut errs, &old_spec, &spec);
        upgrade_downgrade_ip_families(&mut errs, &old_spec, &spec);
        load_balancer_class_update(&mut errs, &old_spec, &spec);
        if old_spec.needs_health_check() && spec.needs_health_check() {
            let new_port = spec.num("healthCheckNodePort");
            if !new_port.is_zero() && new_port != old_spec.num("healthCheckNodePort") {
                errs.forbidden("spec.healthCheckNodePort", "field is immutable");
            }
        }
    }
    validate_service_into(&mut errs, new, &spec);
    errs.0
}

// ---------------------------------------------------------------------------------------------
// Causes, spelled as upstream's field.Error.Error().

#[derive(Default)]
struct Errs(Vec<Cause>);

impl Errs {
    fn push(&mut self, reason: &'static str, field: String, message: String) {
        self.0.push(Cause {
            reason,
            field,
            message,
        });
    }

    fn invalid(&mut self, field: impl Into<String>, value: String, detail: &str) {
        let field = field.into();
        let message = if detail.is_empty() {
            format!("{field}: Invalid value: {value}")
        } else {
            format!("{field}: Invalid value: {value}: {detail}")
        };
        self.push("FieldValueInvalid", field, message);
    }

    fn required(&mut self, field: impl Into<String>, detail: &str) {
        let field = field.into();
        let message = if detail.is_empty() {
            format!("{field}: Required value")
        } else {
            format!("{field}: Required value: {detail}")
        };
        self.push("FieldValueRequired", field, message);
    }

    fn duplicate(&mut self, field: impl Into<String>, value: String) {
        let field = field.into();
        let message = format!("{field}: Duplicate value: {value}");
        self.push("FieldValueDuplicate", field, message);
    }

    fn not_supported(&mut self, field: impl Into<String>, value: String, supported: &[&str]) {
        let field = field.into();
        let mut message = format!("{field}: Unsupported value: {value}");
        if !supported.is_empty() {
            let quoted: Vec<String> = supported.iter().map(|s| quote(s)).collect();
            let _ = write!(message, ": supported values: {}", quoted.join(", "));
        }
        self.push("FieldValueNotSupported", field, message);
    }

    fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        let field = field.into();
        let message = format!("{field}: Forbidden: {detail}");
        self.push("FieldValueForbidden", field, message);
    }

    fn too_long(&mut self, field: impl Into<String>, max_bytes: usize) {
        let field = field.into();
        let unit = if max_bytes == 1 { "byte" } else { "bytes" };
        let message = format!("{field}: Too long: may not be more than {max_bytes} {unit}");
        self.push("FieldValueTooLong", field, message);
    }
}

/// Go's `strconv.Quote` (as `%q` prints a string).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if go_non_printable(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The common code points Go's `strconv.IsPrint` rejects beyond ASCII controls.
fn go_non_printable(c: char) -> bool {
    matches!(c as u32,
        0x80..=0xa0 | 0xad | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0xfeff
            | 0xfff9..=0xfffb)
}

/// A JSON value rendered as upstream renders the Go value it decodes to.
fn render(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// An optional field rendered as upstream renders a pointer: `null` when unset.
fn render_opt(v: Option<&Value>) -> String {
    v.map_or_else(|| "null".to_string(), render)
}

/// A Go `[]string` as apimachinery's field errors render it (JSON since v0.31); `None` is a nil
/// slice (`null`).
fn go_string_slice(v: Option<&[String]>) -> String {
    match v {
        None => "null".to_string(),
        Some(items) => serde_json::to_string(items).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// k8s.io/apimachinery/pkg/util/validation, with upstream's messages.

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

const LABEL_MAX: usize = 63;
const SUBDOMAIN_MAX: usize = 253;
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn inclusive_range_error(lo: i64, hi: i64) -> String {
    format!("must be between {lo} and {hi}, inclusive")
}

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        let _ = write!(s, "'{example}', ");
    }
    let _ = write!(s, "regex used for validation is '{fmt}')");
    s
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            is_lower_alnum(first)
                && is_lower_alnum(last)
                && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1035_label(s: &str) -> bool {
    matches_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn matches_label_key_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_MAX {
        errs.push(max_len_error(LABEL_MAX));
    }
    if !matches_dns1123_label(value) {
        if matches_dns1123_subdomain(value) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > SUBDOMAIN_MAX {
        errs.push(max_len_error(SUBDOMAIN_MAX));
    }
    if !matches_dns1123_subdomain(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_MAX {
        errs.push(max_len_error(LABEL_MAX));
    }
    if !matches_dns1035_label(value) {
        errs.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `IsQualifiedName` / `IsLabelKey`: a name with an optional DNS-subdomain prefix.
fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(LABEL_KEY_ERR, LABEL_KEY_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > LABEL_MAX {
        errs.push(format!("name part {}", max_len_error(LABEL_MAX)));
    }
    if !matches_label_key_name(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                LABEL_KEY_ERR,
                LABEL_KEY_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

fn is_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_MAX {
        errs.push(max_len_error(LABEL_MAX));
    }
    if !value.is_empty() && !matches_label_key_name(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsValidPortName`: an IANA_SVC_NAME.
fn is_valid_port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    if port.is_empty() || !port.bytes().all(|c| is_lower_alnum(c) || c == b'-') {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// Upstream's `maskTrailingDash`, applied to `generateName` prefixes (including its quirk of
/// dropping the character before the dash).
fn mask_trailing_dash(name: &str) -> String {
    if name.len() > 1 && name.ends_with('-') {
        let mut cut = name.len() - 2;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}a", &name[..cut])
    } else {
        name.to_string()
    }
}

fn name_errors(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    let masked;
    let name = if prefix {
        masked = mask_trailing_dash(name);
        masked.as_str()
    } else {
        name
    };
    match rule {
        NameRule::Dns1035Label => is_dns1035_label(name),
        NameRule::Dns1123Label => is_dns1123_label(name),
        NameRule::Dns1123Subdomain => is_dns1123_subdomain(name),
    }
}

// ---------------------------------------------------------------------------------------------
// IP addresses, parsed as k8s.io/utils/net's "sloppy" parsers (IPv4 octets may have leading
// zeros).

const INVALID_IP: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const INVALID_CIDR: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

fn parse_decimal(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u32 = 0;
    for b in s.bytes() {
        n = n.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
        if n > 0xFF_FFFF {
            return None;
        }
    }
    (n <= max).then_some(n)
}

fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        *octet = u8::try_from(parse_decimal(parts.next()?, 255)?).ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if !s.contains(':') {
        return parse_ipv4_sloppy(s).map(IpAddr::V4);
    }
    // An IPv6 address ending in a dotted IPv4 address with leading zeros.
    let (head, tail) = s.split_at(s.rfind(':')? + 1);
    if tail.contains('.') {
        let v4 = parse_ipv4_sloppy(tail)?;
        return format!("{head}{v4}").parse().ok();
    }
    None
}

fn is_valid_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else {
        return false;
    };
    let max_bits = if addr.contains(':') { 128 } else { 32 };
    parse_ip_sloppy(addr).is_some() && parse_decimal(bits, max_bits).is_some()
}

/// Go's `To4() != nil`: IPv4, or IPv4-mapped IPv6.
fn as_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

fn is_ipv6_string(s: &str) -> bool {
    parse_ip_sloppy(s).is_some_and(|ip| as_ipv4(ip).is_none())
}

/// `ValidateNonSpecialIP`, for an address already known to parse.
fn non_special_ip(errs: &mut Errs, field: &str, value: &str, ip: IpAddr) {
    let (unspecified, loopback, link_local, link_local_multicast) = match (as_ipv4(ip), ip) {
        (Some(v4), _) => {
            let o = v4.octets();
            (
                v4.is_unspecified(),
                o[0] == 127,
                o[0] == 169 && o[1] == 254,
                o[0] == 224 && o[1] == 0 && o[2] == 0,
            )
        }
        (None, IpAddr::V6(v6)) => {
            let o = v6.octets();
            (
                v6.is_unspecified(),
                v6.is_loopback(),
                o[0] == 0xfe && o[1] & 0xc0 == 0x80,
                o[0] == 0xff && o[1] & 0x0f == 0x02,
            )
        }
        (None, IpAddr::V4(_)) => (false, false, false, false),
    };
    if unspecified {
        errs.invalid(
            field,
            quote(value),
            &format!("may not be unspecified ({value})"),
        );
    }
    if loopback {
        errs.invalid(
            field,
            quote(value),
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        );
    }
    if link_local {
        errs.invalid(
            field,
            quote(value),
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        );
    }
    if link_local_multicast {
        errs.invalid(
            field,
            quote(value),
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// metadata

fn validate_meta_into(errs: &mut Errs, rule: NameRule, meta: &Value) {
    let generate_name = str_of(meta, "generateName");
    let name = str_of(meta, "name");
    if !generate_name.is_empty() {
        for msg in name_errors(rule, generate_name, true) {
            errs.invalid("metadata.generateName", quote(generate_name), &msg);
        }
    }
    if name.is_empty() {
        if generate_name.is_empty() {
            errs.required("metadata.name", "name or generateName is required");
        }
    } else {
        for msg in name_errors(rule, name, false) {
            errs.invalid("metadata.name", quote(name), &msg);
        }
    }

    let namespace = str_of(meta, "namespace");
    if !namespace.is_empty() {
        for msg in is_dns1123_label(namespace) {
            errs.invalid("metadata.namespace", quote(namespace), &msg);
        }
    }

    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        validate_labels(errs, labels, "metadata.labels");
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        validate_annotations(errs, annotations, "metadata.annotations");
    }
}

/// `ValidateLabels`: keys are qualified names, values label values; both reported on `path`.
fn validate_labels(errs: &mut Errs, labels: &Map<String, Value>, path: &str) {
    for (key, value) in labels {
        for msg in is_qualified_name(key) {
            errs.invalid(path, quote(key), &msg);
        }
        if let Some(value) = value.as_str() {
            for msg in is_label_value(value) {
                errs.invalid(path, quote(value), &msg);
            }
        }
    }
}

/// `ValidateAnnotations`: keys are qualified names regardless of case; total size ≤ 256 KiB.
fn validate_annotations(errs: &mut Errs, annotations: &Map<String, Value>, path: &str) {
    let mut total = 0usize;
    for (key, value) in annotations {
        for msg in is_qualified_name(&key.to_lowercase()) {
            errs.invalid(path, quote(key), &msg);
        }
        total += key.len() + value.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT);
    }
}

// ---------------------------------------------------------------------------------------------
// Service

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const SESSION_AFFINITIES: &[&str] = &["ClientIP", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const IP_FAMILIES: &[&str] = &["IPv4", "IPv6"];
const IP_FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
const TRAFFIC_DISTRIBUTIONS: &[&str] = &["PreferClose", "PreferSameZone", "PreferSameNode"];
const MAX_CLIENT_IP_AFFINITY_SECONDS: i64 = 86400;
const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
const ANNOTATION_LB_SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A field present and not null.
fn present<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|v| !v.is_null())
}

/// An integer field: absent reads as 0, as in Go.
#[derive(Debug, Clone, PartialEq)]
enum Num {
    Int(i64),
    /// Present but not an integer: rendered as sent.
    Other(String),
}

impl Num {
    fn of(v: Option<&Value>) -> Num {
        match v {
            None | Some(Value::Null) => Num::Int(0),
            Some(v) => v.as_i64().map_or_else(|| Num::Other(render(v)), Num::Int),
        }
    }

    fn is_zero(&self) -> bool {
        *self == Num::Int(0)
    }

    fn in_range(&self, lo: i64, hi: i64) -> bool {
        matches!(self, Num::Int(n) if (lo..=hi).contains(n))
    }

    fn render(&self) -> String {
        match self {
            Num::Int(n) => n.to_string(),
            Num::Other(s) => s.clone(),
        }
    }
}

fn strings_of(v: Option<&Value>) -> Option<Vec<String>> {
    match v {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// The parts of a Service's spec the rules read.
struct Spec<'a> {
    spec: &'a Value,
    ty: &'a str,
    /// `clusterIPs` when set, else `[clusterIP]` when set; `None` is a nil list.
    cluster_ips: Option<Vec<String>>,
    ip_families: Vec<String>,
}

impl<'a> Spec<'a> {
    fn of(service: &'a Value) -> Spec<'a> {
        static NULL: Value = Value::Null;
        let spec = service.get("spec").unwrap_or(&NULL);
        let listed = strings_of(spec.get("clusterIPs"));
        let single = str_of(spec, "clusterIP");
        let cluster_ips = match listed {
            Some(list) if !list.is_empty() => Some(list),
            _ if !single.is_empty() => Some(vec![single.to_string()]),
            listed => listed,
        };
        Spec {
            spec,
            ty: str_of(spec, "type"),
            cluster_ips,
            ip_families: strings_of(spec.get("ipFamilies")).unwrap_or_default(),
        }
    }

    fn ips(&self) -> &[String] {
        self.cluster_ips.as_deref().unwrap_or(&[])
    }

    fn is_headless(&self) -> bool {
        matches!(self.ips(), [only] if only == "None")
    }

    fn is_external_name(&self) -> bool {
        self.ty == "ExternalName"
    }

    fn is_load_balancer(&self) -> bool {
        self.ty == "LoadBalancer"
    }

    fn str(&self, key: &str) -> &'a str {
        str_of(self.spec, key)
    }

    fn num(&self, key: &str) -> Num {
        Num::of(self.spec.get(key))
    }

    fn present(&self, key: &str) -> Option<&'a Value> {
        present(self.spec, key)
    }

    fn ports(&self) -> &'a [Value] {
        self.spec
            .get("ports")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn externally_accessible(&self) -> bool {
        self.ty == "LoadBalancer"
            || self.ty == "NodePort"
            || (self.ty == "ClusterIP"
                && self
                    .spec
                    .get("externalIPs")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty()))
    }

    fn needs_health_check(&self) -> bool {
        self.is_load_balancer() && self.str("externalTrafficPolicy") == "Local"
    }

    fn policy_is_single_stack(&self) -> bool {
        self.str("ipFamilyPolicy") == "SingleStack"
    }
}

fn validate_service_into(errs: &mut Errs, service: &Value, spec: &Spec<'_>) {
    static NULL: Value = Value::Null;
    let meta = service.get("metadata").unwrap_or(&NULL);
    validate_meta_into(errs, NameRule::Dns1035Label, meta);

    let annotations = meta.get("annotations").and_then(Value::as_object);
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
    if let (Some(hints), Some(mode)) = (
        annotation(ANNOTATION_TOPOLOGY_AWARE_HINTS),
        annotation(ANNOTATION_TOPOLOGY_MODE),
    ) && hints != mode
    {
        errs.invalid(
            format!("metadata.annotations[{ANNOTATION_TOPOLOGY_MODE}]"),
            quote(mode),
            &format!(
                "must match annotations[{ANNOTATION_TOPOLOGY_AWARE_HINTS}] when both are specified"
            ),
        );
    }

    let ports = spec.ports();
    if ports.is_empty() && !spec.is_headless() && !spec.is_external_name() {
        errs.required("spec.ports", "");
    }
    match spec.ty {
        "LoadBalancer" | "NodePort" if spec.is_headless() => {
            errs.invalid(
                "spec.clusterIPs[0]",
                quote("None"),
                &format!("may not be set to 'None' for {} services", spec.ty),
            );
        }
        "ExternalName" => {
            if !spec.ips().is_empty() {
                errs.forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                );
            }
            if !spec.ip_families.is_empty() {
                errs.forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                );
            }
            if spec.present("ipFamilyPolicy").is_some() {
                errs.forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                );
            }
            // The value (a CNAME) may have a trailing dot to denote it as fully qualified.
            let external_name = spec.str("externalName");
            let cname = external_name.strip_suffix('.').unwrap_or(external_name);
            if cname.is_empty() {
                errs.required("spec.externalName", "");
            } else {
                for msg in is_dns1123_subdomain(cname) {
                    errs.invalid("spec.externalName", quote(cname), &msg);
                }
            }
        }
        _ => {}
    }

    let mut port_names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        validate_service_port(
            errs,
            port,
            ports.len() > 1,
            &mut port_names,
            &format!("spec.ports[{i}]"),
        );
    }

    if let Some(selector) = spec.spec.get("selector").and_then(Value::as_object) {
        validate_labels(errs, selector, "spec.selector");
    }

    validate_session_affinity(errs, spec);
    validate_cluster_ips_related(errs, spec);

    if let Some(external_ips) = spec.spec.get("externalIPs").and_then(Value::as_array) {
        for (i, ip) in external_ips.iter().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            let text = ip.as_str().map_or_else(|| ip.to_string(), str::to_owned);
            match parse_ip_sloppy(&text) {
                None => errs.invalid(&field, quote(&text), INVALID_IP),
                Some(parsed) => non_special_ip(errs, &field, &text, parsed),
            }
        }
    }

    if spec.ty.is_empty() {
        errs.required("spec.type", "");
    } else if !SERVICE_TYPES.contains(&spec.ty) {
        errs.not_supported("spec.type", quote(spec.ty), SERVICE_TYPES);
    }

    if spec.ty == "ClusterIP" {
        for (i, port) in ports.iter().enumerate() {
            if !Num::of(port.get("nodePort")).is_zero() {
                errs.forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                );
            }
        }
    }

    // Duplicate node ports and ports, each per protocol.
    let mut node_ports = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let node_port = Num::of(port.get("nodePort"));
        if node_port.is_zero() {
            continue;
        }
        if !node_ports.insert((str_of(port, "protocol"), node_port.render())) {
            errs.duplicate(format!("spec.ports[{i}].nodePort"), node_port.render());
        }
    }
    let mut seen_ports = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let protocol = str_of(port, "protocol");
        let number = Num::of(port.get("port")).render();
        if !seen_ports.insert((protocol, number.clone())) {
            // Upstream reports the map key, a core.ServicePort with only these two fields set.
            errs.duplicate(
                format!("spec.ports[{i}]"),
                format!(
                    "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{number}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                    quote(protocol)
                ),
            );
        }
    }

    validate_source_ranges(errs, spec, annotations);

    if spec.present("allocateLoadBalancerNodePorts").is_some() && !spec.is_load_balancer() {
        errs.forbidden(
            "spec.allocateLoadBalancerNodePorts",
            "may only be used when `type` is 'LoadBalancer'",
        );
    }

    if let Some(class) = spec.present("loadBalancerClass") {
        if spec.is_load_balancer() {
            let class = class.as_str().unwrap_or("");
            for msg in is_qualified_name(class) {
                errs.invalid("spec.loadBalancerClass", quote(class), &msg);
            }
        } else {
            errs.forbidden(
                "spec.loadBalancerClass",
                "may only be used when `type` is 'LoadBalancer'",
            );
        }
    }

    validate_traffic_policies(errs, spec);

    if let Some(distribution) = spec.present("trafficDistribution")
        && !distribution
            .as_str()
            .is_some_and(|d| TRAFFIC_DISTRIBUTIONS.contains(&d))
    {
        errs.not_supported(
            "spec.trafficDistribution",
            render(distribution),
            TRAFFIC_DISTRIBUTIONS,
        );
    }
}

fn validate_service_port(
    errs: &mut Errs,
    port: &Value,
    require_name: bool,
    names: &mut HashSet<String>,
    path: &str,
) {
    let name = str_of(port, "name");
    if require_name && name.is_empty() {
        errs.required(format!("{path}.name"), "");
    } else if !name.is_empty() {
        for msg in is_dns1123_label(name) {
            errs.invalid(format!("{path}.name"), quote(name), &msg);
        }
        if !names.insert(name.to_string()) {
            errs.duplicate(format!("{path}.name"), quote(name));
        }
    }

    let number = Num::of(port.get("port"));
    if !number.in_range(1, 65535) {
        errs.invalid(
            format!("{path}.port"),
            number.render(),
            &inclusive_range_error(1, 65535),
        );
    }

    match present(port, "protocol") {
        None => errs.required(format!("{path}.protocol"), ""),
        Some(Value::String(p)) if p.is_empty() => errs.required(format!("{path}.protocol"), ""),
        Some(p) if p.as_str().is_some_and(|p| PROTOCOLS.contains(&p)) => {}
        Some(p) => errs.not_supported(format!("{path}.protocol"), render(p), PROTOCOLS),
    }

    match present(port, "targetPort") {
        None => {}
        Some(Value::String(target)) => {
            for msg in is_valid_port_name(target) {
                errs.invalid(format!("{path}.targetPort"), quote(target), &msg);
            }
        }
        Some(target) => {
            let target = Num::of(Some(target));
            if !target.in_range(1, 65535) {
                errs.invalid(
                    format!("{path}.targetPort"),
                    target.render(),
                    &inclusive_range_error(1, 65535),
                );
            }
        }
    }

    if let Some(app_protocol) = present(port, "appProtocol") {
        let app_protocol = app_protocol.as_str().unwrap_or("");
        for msg in is_qualified_name(app_protocol) {
            errs.invalid(format!("{path}.appProtocol"), quote(app_protocol), &msg);
        }
    }

    // The node port range is the allocator's; validation only bounds the number.
    let node_port = Num::of(port.get("nodePort"));
    if !node_port.is_zero() && !node_port.in_range(0, 65535) {
        errs.invalid(
            format!("{path}.nodePort"),
            node_port.render(),
            &inclusive_range_error(0, 65535),
        );
    }
}

fn validate_session_affinity(errs: &mut Errs, spec: &Spec<'_>) {
    let affinity = spec.str("sessionAffinity");
    match spec.present("sessionAffinity") {
        None => errs.required("spec.sessionAffinity", ""),
        Some(Value::String(a)) if a.is_empty() => errs.required("spec.sessionAffinity", ""),
        Some(a) if a.as_str().is_some_and(|a| SESSION_AFFINITIES.contains(&a)) => {}
        Some(a) => errs.not_supported("spec.sessionAffinity", render(a), SESSION_AFFINITIES),
    }
    let config = spec.present("sessionAffinityConfig");
    if affinity == "ClientIP" {
        // Upstream defaults the timeout (10800 s); here it is checked when given.
        let timeout = config
            .and_then(|c| present(c, "clientIP"))
            .and_then(|c| present(c, "timeoutSeconds"));
        if let Some(timeout) = timeout {
            let timeout = Num::of(Some(timeout));
            if !timeout.in_range(1, MAX_CLIENT_IP_AFFINITY_SECONDS) {
                errs.invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout.render(),
                    &format!(
                        "must be greater than 0 and less than {MAX_CLIENT_IP_AFFINITY_SECONDS}"
                    ),
                );
            }
        }
    } else if affinity == "None" && config.is_some() {
        errs.forbidden(
            "spec.sessionAffinityConfig",
            "must not be set when session affinity is None",
        );
    }
}

/// `ValidateServiceClusterIPsRelatedFields`, plus the registry's SingleStack checks.
fn validate_cluster_ips_related(errs: &mut Errs, spec: &Spec<'_>) {
    if spec.is_external_name() {
        return; // validated above: all must be unset
    }
    let ips = spec.ips();
    let slice = || go_string_slice(spec.cluster_ips.as_deref());

    let cluster_ip = spec.str("clusterIP");
    let listed = strings_of(spec.spec.get("clusterIPs")).unwrap_or_default();
    if !cluster_ip.is_empty() && !listed.is_empty() && listed[0] != cluster_ip {
        errs.invalid(
            "spec.clusterIPs",
            slice(),
            "first value must match `clusterIP`",
        );
    }

    let mut seen = HashSet::new();
    for (i, family) in spec.ip_families.iter().enumerate() {
        let rendered = spec
            .spec
            .get("ipFamilies")
            .and_then(|f| f.get(i))
            .map_or_else(|| quote(family), render);
        if !IP_FAMILIES.contains(&family.as_str()) {
            errs.not_supported(
                format!("spec.ipFamilies[{i}]"),
                rendered.clone(),
                IP_FAMILIES,
            );
        }
        if !seen.insert(family.as_str()) {
            errs.duplicate(format!("spec.ipFamilies[{i}]"), rendered);
        }
    }

    if let Some(policy) = spec.present("ipFamilyPolicy")
        && !policy
            .as_str()
            .is_some_and(|p| IP_FAMILY_POLICIES.contains(&p))
    {
        errs.not_supported("spec.ipFamilyPolicy", render(policy), IP_FAMILY_POLICIES);
    }

    let mut has_invalid_ips = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == "None" {
            if ips.len() > 1 {
                has_invalid_ips = true;
                errs.invalid(
                    "spec.clusterIPs",
                    slice(),
                    "'None' must be the first and only value",
                );
            }
            continue;
        }
        if parse_ip_sloppy(ip).is_none() {
            has_invalid_ips = true;
            errs.invalid(format!("spec.clusterIPs[{i}]"), quote(ip), INVALID_IP);
        }
    }
    if ips.len() > 2 {
        errs.invalid("spec.clusterIPs", slice(), "may only hold up to 2 values");
    }
    if has_invalid_ips {
        return;
    }

    if ips.len() > 1 {
        let v6 = ips.iter().filter(|ip| is_ipv6_string(ip)).count();
        if v6 == 0 || v6 == ips.len() {
            errs.invalid(
                "spec.clusterIPs",
                slice(),
                "may specify no more than one IP for each IP family",
            );
        }
    }

    if !spec.is_headless() {
        for (i, (ip, family)) in ips.iter().zip(&spec.ip_families).enumerate() {
            if family == "IPv4" && is_ipv6_string(ip) {
                errs.invalid(
                    format!("spec.clusterIPs[{i}]"),
                    quote(ip),
                    &format!("expected an IPv4 value as indicated by `ipFamilies[{i}]`"),
                );
            }
            if family == "IPv6" && !is_ipv6_string(ip) {
                errs.invalid(
                    format!("spec.clusterIPs[{i}]"),
                    quote(ip),
                    &format!("expected an IPv6 value as indicated by `ipFamilies[{i}]`"),
                );
            }
        }
    }

    if spec.policy_is_single_stack() {
        if ips.len() == 2 {
            errs.invalid(
                "spec.ipFamilyPolicy",
                quote("SingleStack"),
                "must be RequireDualStack or PreferDualStack when multiple 'clusterIPs' are specified",
            );
        }
        if spec.ip_families.len() == 2 {
            errs.invalid(
                "spec.ipFamilyPolicy",
                quote("SingleStack"),
                "must be RequireDualStack or PreferDualStack when multiple 'ipFamilies' are specified",
            );
        }
    }
}

fn validate_source_ranges(
    errs: &mut Errs,
    spec: &Spec<'_>,
    annotations: Option<&Map<String, Value>>,
) {
    let ranges = spec
        .spec
        .get("loadBalancerSourceRanges")
        .and_then(Value::as_array);
    if let Some(ranges) = ranges.filter(|r| !r.is_empty()) {
        // Upstream's field path really is capitalised.
        let path = "spec.LoadBalancerSourceRanges";
        if !spec.is_load_balancer() {
            errs.forbidden(path, "may only be used when `type` is 'LoadBalancer'");
        }
        for (i, range) in ranges.iter().enumerate() {
            // Space-padded values are tolerated, for historical reasons.
            let value = range
                .as_str()
                .map_or_else(|| range.to_string(), |s| s.trim().to_string());
            if !is_valid_cidr(&value) {
                errs.invalid(format!("{path}[{i}]"), quote(&value), INVALID_CIDR);
            }
        }
    } else if let Some(value) = annotations.and_then(|a| a.get(ANNOTATION_LB_SOURCE_RANGES)) {
        let path = format!("metadata.annotations[{ANNOTATION_LB_SOURCE_RANGES}]");
        if !spec.is_load_balancer() {
            errs.forbidden(&path, "may only be used when `type` is 'LoadBalancer'");
        }
        let value = value.as_str().unwrap_or("").trim();
        if !value.is_empty() {
            for cidr in value.split(',').map(str::trim) {
                if !is_valid_cidr(cidr) {
                    errs.invalid(&path, quote(cidr), INVALID_CIDR);
                }
            }
        }
    }
}

fn validate_traffic_policies(errs: &mut Errs, spec: &Spec<'_>) {
    let external = spec.present("externalTrafficPolicy");
    if !spec.externally_accessible() {
        if let Some(policy) = external.filter(|p| p.as_str() != Some("")) {
            errs.invalid(
                "spec.externalTrafficPolicy",
                render(policy),
                "may only be set for externally-accessible services",
            );
        }
    } else if let Some(policy) = external.filter(|p| p.as_str() != Some(""))
        && !policy
            .as_str()
            .is_some_and(|p| TRAFFIC_POLICIES.contains(&p))
    {
        errs.not_supported(
            "spec.externalTrafficPolicy",
            render(policy),
            TRAFFIC_POLICIES,
        );
    }

    // Allocated by admission when needed; checked here when given.
    let health_check = spec.num("healthCheckNodePort");
    if !spec.needs_health_check() {
        if !health_check.is_zero() {
            errs.invalid(
                "spec.healthCheckNodePort",
                health_check.render(),
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            );
        }
    } else if !health_check.is_zero() && !health_check.in_range(1, 65535) {
        errs.invalid(
            "spec.healthCheckNodePort",
            health_check.render(),
            &inclusive_range_error(1, 65535),
        );
    }

    match spec.present("internalTrafficPolicy") {
        None => {
            if matches!(spec.ty, "ClusterIP" | "NodePort" | "LoadBalancer") {
                errs.required("spec.internalTrafficPolicy", "");
            }
        }
        Some(p) if p.as_str().is_some_and(|p| TRAFFIC_POLICIES.contains(&p)) => {}
        Some(p) => errs.not_supported("spec.internalTrafficPolicy", render(p), TRAFFIC_POLICIES),
    }
}

/// `validateUpgradeDowngradeClusterIPs`: the cluster IPs may gain or lose a secondary, but the
/// primary may not change or go, unless either side is an ExternalName.
fn upgrade_downgrade_cluster_ips(errs: &mut Errs, old: &Spec<'_>, new: &Spec<'_>) {
    if new.is_external_name() || old.is_external_name() {
        return;
    }
    if old.is_headless() && new.is_headless() {
        return;
    }
    let (before, after) = (old.ips(), new.ips());
    let changed = |errs: &mut Errs, i: usize| {
        errs.invalid(
            format!("spec.clusterIPs[{i}]"),
            quote(&after[i]),
            "may not change once set",
        );
    };
    if before.len() == after.len() {
        for i in 0..before.len() {
            if before[i] != after[i] {
                changed(errs, i);
            }
        }
    } else if before.len() > after.len() {
        if after.is_empty() {
            errs.invalid(
                "spec.clusterIPs[0]",
                go_string_slice(new.cluster_ips.as_deref()),
                "primary clusterIP can not be unset",
            );
        } else if after[0] != before[0] {
            changed(errs, 0);
        }
        if after.len() == 1 && !new.policy_is_single_stack() {
            errs.invalid(
                "spec.ipFamilyPolicy",
                render_opt(new.present("ipFamilyPolicy")),
                "must be set to 'SingleStack' when releasing the secondary clusterIP",
            );
        }
    } else if !before.is_empty() && after[0] != before[0] {
        changed(errs, 0);
    }
}

/// `validateUpgradeDowngradeIPFamilies`: the primary family is immutable once set. A new object
/// without families is left to admission, which fills them from the stored ones.
fn upgrade_downgrade_ip_families(errs: &mut Errs, old: &Spec<'_>, new: &Spec<'_>) {
    if new.is_external_name() || old.is_external_name() {
        return;
    }
    if new.is_headless() || old.is_headless() {
        return; // headless Services may change families, and so may a change to or from one
    }
    let (before, after) = (&old.ip_families, &new.ip_families);
    if after.is_empty() {
        return;
    }
    let changed = |errs: &mut Errs, i: usize| {
        errs.invalid(
            format!("spec.ipFamilies[{i}]"),
            quote(&after[i]),
            "may not change once set",
        );
    };
    if before.len() == after.len() {
        for i in 0..before.len() {
            if before[i] != after[i] {
                changed(errs, i);
            }
        }
    } else if before.len() > after.len() {
        if after[0] != before[0] {
            changed(errs, 0);
        }
        if after.len() == 1 && !new.policy_is_single_stack() {
            errs.invalid(
                "spec.ipFamilyPolicy",
                render_opt(new.present("ipFamilyPolicy")),
                "must be set to 'SingleStack' when releasing the secondary ipFamily",
            );
        }
    } else if !before.is_empty() && after[0] != before[0] {
        changed(errs, 0);
    }
}

fn load_balancer_class_update(errs: &mut Errs, old: &Spec<'_>, new: &Spec<'_>) {
    if old.is_load_balancer() && new.is_load_balancer() {
        let (before, after) = (
            old.present("loadBalancerClass"),
            new.present("loadBalancerClass"),
        );
        if before != after {
            errs.invalid(
                "spec.loadBalancerClass",
                render_opt(after),
                "may not change once set",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn messages(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.message.as_str()).collect()
    }

    /// A valid single-stack ClusterIP Service as the server stores it after defaulting.
    fn service() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": "web"},
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
                "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster"
            }
        })
    }

    fn only(causes: &[Cause]) -> &Cause {
        assert_eq!(
            causes.len(),
            1,
            "expected one cause, got {:#?}",
            messages(causes)
        );
        &causes[0]
    }

    #[test]
    fn a_defaulted_cluster_ip_service_is_valid() {
        assert_eq!(
            messages(&validate_service(&service(), None)),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn port_zero_is_out_of_range() {
        let mut svc = service();
        svc["spec"]["ports"][0]["port"] = json!(0);
        let causes = validate_service(&svc, None);
        let cause = only(&causes);
        assert_eq!(cause.reason, "FieldValueInvalid");
        assert_eq!(cause.field, "spec.ports[0].port");
        assert_eq!(
            cause.message,
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn a_duplicate_port_name_is_a_duplicate_value() {
        let mut svc = service();
        svc["spec"]["ports"] = json!([
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80},
            {"name": "http", "port": 81, "protocol": "TCP", "targetPort": 81}
        ]);
        let causes = validate_service(&svc, None);
        let cause = only(&causes);
        assert_eq!(cause.reason, "FieldValueDuplicate");
        assert_eq!(
            cause.message,
            r#"spec.ports[1].name: Duplicate value: "http""#
        );
    }

    #[test]
    fn a_port_name_is_required_when_there_are_two_ports() {
        let mut svc = service();
        svc["spec"]["ports"] = json!([
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80},
            {"port": 443, "protocol": "TCP", "targetPort": 443}
        ]);
        let causes = validate_service(&svc, None);
        let cause = only(&causes);
        assert_eq!(cause.reason, "FieldValueRequired");
        assert_eq!(cause.field, "spec.ports[1].name");
        assert_eq!(cause.message, "spec.ports[1].name: Required value");
    }

    #[test]
    fn an_unknown_protocol_is_not_supported() {
        let mut svc = service();
        svc["spec"]["ports"][0]["protocol"] = json!("FOO");
        let causes = validate_service(&svc, None);
        let cause = only(&causes);
        assert_eq!(cause.reason, "FieldValueNotSupported");
        assert_eq!(
            cause.message,
            r#"spec.ports[0].protocol: Unsupported value: "FOO": supported values: "SCTP", "TCP", "UDP""#
        );
    }

    #[test]
    fn a_changed_cluster_ip_on_update_may_not_change_once_set() {
        let mut old = service();
        old["spec"]["clusterIP"] = json!("10.0.0.1");
        old["spec"]["clusterIPs"] = json!(["10.0.0.1"]);
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.0.0.2");
        new["spec"]["clusterIPs"] = json!(["10.0.0.2"]);
        let causes = validate_service(&new, Some(&old));
        let cause = only(&causes);
        assert_eq!(cause.reason, "FieldValueInvalid");
        assert_eq!(cause.field, "spec.clusterIPs[0]");
        assert_eq!(
            cause.message,
            r#"spec.clusterIPs[0]: Invalid value: "10.0.0.2": may not change once set"#
        );

        // Changing only `clusterIP` reads the same.
        new["spec"].as_object_mut().unwrap().remove("clusterIPs");
        let causes = validate_service(&new, Some(&old));
        assert_eq!(
            only(&causes).message,
            r#"spec.clusterIPs[0]: Invalid value: "10.0.0.2": may not change once set"#
        );
    }

    #[test]
    fn removing_a_cluster_ip_is_refused_unless_the_type_becomes_external_name() {
        let mut old = service();
        old["spec"]["clusterIP"] = json!("10.0.0.1");
        old["spec"]["clusterIPs"] = json!(["10.0.0.1"]);
        let causes = validate_service(&service(), Some(&old));
        assert_eq!(
            only(&causes).message,
            "spec.clusterIPs[0]: Invalid value: null: primary clusterIP can not be unset"
        );

        let new = json!({
            "metadata": {"name": "web"},
            "spec": {"type": "ExternalName", "externalName": "example.com.", "sessionAffinity": "None"}
        });
        assert_eq!(
            messages(&validate_service(&new, Some(&old))),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn an_external_name_service_needs_an_external_name() {
        let svc = json!({
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "sessionAffinity": "None"}
        });
        let causes = validate_service(&svc, None);
        let cause = only(&causes);
        assert_eq!(cause.reason, "FieldValueRequired");
        assert_eq!(cause.message, "spec.externalName: Required value");
    }

    #[test]
    fn a_node_port_on_a_cluster_ip_service_is_forbidden() {
        let mut svc = service();
        svc["spec"]["ports"][0]["nodePort"] = json!(30080);
        let causes = validate_service(&svc, None);
        let cause = only(&causes);
        assert_eq!(cause.reason, "FieldValueForbidden");
        assert_eq!(
            cause.message,
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
        );
    }

    #[test]
    fn a_service_name_must_be_a_dns_1035_label() {
        let mut svc = service();
        svc["metadata"]["name"] = json!("Foo_1");
        let causes = validate_service(&svc, None);
        let cause = only(&causes);
        assert_eq!(cause.field, "metadata.name");
        assert_eq!(
            cause.message,
            r#"metadata.name: Invalid value: "Foo_1": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"#
        );

        let long = "a".repeat(64);
        svc["metadata"]["name"] = json!(long);
        let causes = validate_service(&svc, None);
        assert_eq!(
            only(&causes).message,
            format!("metadata.name: Invalid value: \"{long}\": must be no more than 63 characters")
        );
    }

    #[test]
    fn a_label_value_longer_than_63_characters_is_invalid() {
        let value = "v".repeat(64);
        let meta = json!({"name": "web", "labels": {"app": value}});
        let causes = validate_metadata("Service", &meta);
        let cause = only(&causes);
        assert_eq!(cause.field, "metadata.labels");
        assert_eq!(
            cause.message,
            format!(
                "metadata.labels: Invalid value: \"{value}\": must be no more than 63 characters"
            )
        );
    }

    #[test]
    fn a_valid_dual_stack_node_port_service_has_no_causes() {
        let svc = json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "web"},
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "RequireDualStack",
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http-alt", "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053}
                ],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                "externalTrafficPolicy": "Cluster",
                "internalTrafficPolicy": "Cluster"
            }
        });
        assert_eq!(messages(&validate_service(&svc, None)), Vec::<&str>::new());
        assert_eq!(
            messages(&validate_service(&svc, Some(&svc))),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_headless_service_without_ports_has_no_causes() {
        let svc = json!({
            "metadata": {"name": "db"},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "None",
                "clusterIPs": ["None"],
                "selector": {"app": "db"},
                "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster"
            }
        });
        assert_eq!(messages(&validate_service(&svc, None)), Vec::<&str>::new());
    }

    #[test]
    fn a_missing_name_is_required_unless_generate_name_is_set() {
        let causes = validate_metadata("Pod", &json!({}));
        assert_eq!(
            only(&causes).message,
            "metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(
            messages(&validate_metadata("Pod", &json!({"generateName": "web-"}))),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn other_kinds_use_dns_1123_rules() {
        assert_eq!(name_rule("services"), NameRule::Dns1035Label);
        assert_eq!(name_rule("Namespace"), NameRule::Dns1123Label);
        assert_eq!(name_rule("EndpointSlice"), NameRule::Dns1123Subdomain);
        let causes = validate_metadata("Pod", &json!({"name": "Web.1"}));
        assert_eq!(
            only(&causes).message,
            r#"metadata.name: Invalid value: "Web.1": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#
        );
        let causes = validate_metadata("Namespace", &json!({"name": "kube.system"}));
        assert_eq!(
            only(&causes).message,
            r#"metadata.name: Invalid value: "kube.system": must not contain dots"#
        );
        let causes = validate_metadata("Namespace", &json!({"name": "-x"}));
        assert_eq!(
            only(&causes).message,
            r#"metadata.name: Invalid value: "-x": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
        );
    }

    #[test]
    fn a_bad_label_key_gets_upstreams_message() {
        let causes = validate_metadata("Pod", &json!({"name": "p", "labels": {"bad key": "v"}}));
        assert_eq!(
            only(&causes).message,
            r#"metadata.labels: Invalid value: "bad key": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#
        );
    }

    #[test]
    fn annotations_over_256_kib_are_too_long() {
        let meta =
            json!({"name": "p", "annotations": {"big": "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT)}});
        let causes = validate_metadata("Pod", &meta);
        let cause = only(&causes);
        assert_eq!(cause.reason, "FieldValueTooLong");
        assert_eq!(
            cause.message,
            "metadata.annotations: Too long: may not be more than 262144 bytes"
        );
    }

    #[test]
    fn duplicate_port_and_protocol_pairs_are_reported_as_upstream_prints_them() {
        let mut svc = service();
        svc["spec"]["ports"] = json!([
            {"name": "a", "port": 80, "protocol": "TCP", "targetPort": 80},
            {"name": "b", "port": 80, "protocol": "TCP", "targetPort": 81}
        ]);
        let causes = validate_service(&svc, None);
        assert_eq!(
            only(&causes).message,
            r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#
        );
    }

    #[test]
    fn an_external_traffic_policy_on_an_internal_service_is_invalid() {
        let mut svc = service();
        svc["spec"]["externalTrafficPolicy"] = json!("Local");
        let causes = validate_service(&svc, None);
        assert_eq!(
            only(&causes).message,
            r#"spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services"#
        );
    }

    #[test]
    fn cluster_ips_must_be_ips_of_different_families() {
        let mut svc = service();
        svc["spec"]["clusterIP"] = json!("10.0.0.1");
        svc["spec"]["clusterIPs"] = json!(["10.0.0.1", "10.0.0.2"]);
        let causes = validate_service(&svc, None);
        assert_eq!(
            only(&causes).message,
            r#"spec.clusterIPs: Invalid value: ["10.0.0.1","10.0.0.2"]: may specify no more than one IP for each IP family"#
        );

        svc["spec"]["clusterIPs"] = json!(["10.0.0.1", "nope"]);
        let causes = validate_service(&svc, None);
        assert_eq!(
            only(&causes).message,
            r#"spec.clusterIPs[1]: Invalid value: "nope": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#
        );

        svc["spec"]["clusterIPs"] = json!(["010.000.000.001", "fd00::1"]);
        svc["spec"]["clusterIP"] = json!("010.000.000.001");
        svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        let causes = validate_service(&svc, None);
        assert_eq!(
            only(&causes).message,
            r#"spec.ipFamilyPolicy: Invalid value: "SingleStack": must be RequireDualStack or PreferDualStack when multiple 'clusterIPs' are specified"#
        );
    }

    #[test]
    fn a_target_port_name_must_be_an_iana_service_name() {
        let mut svc = service();
        svc["spec"]["ports"][0]["targetPort"] = json!("Web--");
        let causes = validate_service(&svc, None);
        assert_eq!(
            messages(&causes),
            vec![
                r#"spec.ports[0].targetPort: Invalid value: "Web--": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
                r#"spec.ports[0].targetPort: Invalid value: "Web--": must not contain consecutive hyphens"#,
                r#"spec.ports[0].targetPort: Invalid value: "Web--": must not begin or end with a hyphen"#,
            ]
        );
    }

    #[test]
    fn special_external_ips_are_refused() {
        let mut svc = service();
        svc["spec"]["externalIPs"] = json!(["127.0.0.1", "192.0.2.10"]);
        let causes = validate_service(&svc, None);
        assert_eq!(
            only(&causes).message,
            r#"spec.externalIPs[0]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#
        );
    }

    #[test]
    fn go_quoting_escapes_quotes_and_controls() {
        assert_eq!(quote("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\x01""#);
    }
}
