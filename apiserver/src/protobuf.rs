//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), read into the
//! JSON objects the rest of the server handles. Only core/v1 Namespaces and Services are
//! understood: those are what kubectl's imperative generators (`kubectl create namespace`,
//! `kubectl create service ...`) send as protobuf. Answers are always JSON.
//!
//! The envelope is the 4 magic bytes `k8s\0` and a `runtime.Unknown` message whose `raw` bytes
//! are the object's own message. The object is read by a small protobuf reader driven by the
//! message tables below (field number → JSON name and type), which mirror the field numbers of
//! upstream's `generated.proto` files. Fields not in the tables are skipped. Go's protobuf
//! encoding writes every non-pointer field, zero or not, while its JSON leaves zero values out:
//! zero scalars of non-pointer fields are therefore dropped, and pointer fields keep theirs.

use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// The type of a field's value.
#[derive(Debug, Clone, Copy)]
enum Type {
    String,
    Int32,
    Int64,
    Bool,
    /// A nested message, by its name in [`MESSAGES`].
    Message(&'static str),
    /// `map<string, string>`: repeated entries {1 key, 2 value}.
    StringMap,
    /// `intstr.IntOrString` {1 type, 2 intVal, 3 strVal}: a JSON number or string.
    IntOrString,
}

/// How often a field occurs and whether its zero value shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    /// A Go value field: its zero value is left out, as Go's JSON `omitempty` does.
    Value,
    /// A Go value field without `omitempty`: shown even when zero.
    Always,
    /// A Go pointer field: present means set, zero included.
    Pointer,
    /// A repeated field: a JSON array.
    Repeated,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    number: u64,
    json: &'static str,
    ty: Type,
    card: Card,
}

const fn value(number: u64, json: &'static str, ty: Type) -> Field {
    Field {
        number,
        json,
        ty,
        card: Card::Value,
    }
}

const fn always(number: u64, json: &'static str, ty: Type) -> Field {
    Field {
        number,
        json,
        ty,
        card: Card::Always,
    }
}

const fn pointer(number: u64, json: &'static str, ty: Type) -> Field {
    Field {
        number,
        json,
        ty,
        card: Card::Pointer,
    }
}

const fn repeated(number: u64, json: &'static str, ty: Type) -> Field {
    Field {
        number,
        json,
        ty,
        card: Card::Repeated,
    }
}

/// The messages this reader knows, by name: field numbers from upstream's `generated.proto`
/// (k8s.io/api core/v1 and k8s.io/apimachinery meta/v1). Status conditions, owner references,
/// timestamps and Service status are not read.
const MESSAGES: &[(&str, &[Field])] = &[
    (
        "ObjectMeta",
        &[
            value(1, "name", Type::String),
            value(2, "generateName", Type::String),
            value(3, "namespace", Type::String),
            value(5, "uid", Type::String),
            value(6, "resourceVersion", Type::String),
            value(7, "generation", Type::Int64),
            value(11, "labels", Type::StringMap),
            value(12, "annotations", Type::StringMap),
            repeated(14, "finalizers", Type::String),
        ],
    ),
    (
        "Namespace",
        &[
            value(1, "metadata", Type::Message("ObjectMeta")),
            value(2, "spec", Type::Message("NamespaceSpec")),
            value(3, "status", Type::Message("NamespaceStatus")),
        ],
    ),
    ("NamespaceSpec", &[repeated(1, "finalizers", Type::String)]),
    ("NamespaceStatus", &[value(1, "phase", Type::String)]),
    (
        "Service",
        &[
            value(1, "metadata", Type::Message("ObjectMeta")),
            value(2, "spec", Type::Message("ServiceSpec")),
        ],
    ),
    (
        "ServiceSpec",
        &[
            repeated(1, "ports", Type::Message("ServicePort")),
            value(2, "selector", Type::StringMap),
            value(3, "clusterIP", Type::String),
            value(4, "type", Type::String),
            repeated(5, "externalIPs", Type::String),
            value(7, "sessionAffinity", Type::String),
            value(8, "loadBalancerIP", Type::String),
            repeated(9, "loadBalancerSourceRanges", Type::String),
            value(10, "externalName", Type::String),
            value(11, "externalTrafficPolicy", Type::String),
            value(12, "healthCheckNodePort", Type::Int32),
            value(13, "publishNotReadyAddresses", Type::Bool),
            pointer(
                14,
                "sessionAffinityConfig",
                Type::Message("SessionAffinityConfig"),
            ),
            pointer(17, "ipFamilyPolicy", Type::String),
            repeated(18, "clusterIPs", Type::String),
            repeated(19, "ipFamilies", Type::String),
            pointer(20, "allocateLoadBalancerNodePorts", Type::Bool),
            pointer(21, "loadBalancerClass", Type::String),
            pointer(22, "internalTrafficPolicy", Type::String),
        ],
    ),
    (
        "ServicePort",
        &[
            value(1, "name", Type::String),
            value(2, "protocol", Type::String),
            always(3, "port", Type::Int32),
            value(4, "targetPort", Type::IntOrString),
            value(5, "nodePort", Type::Int32),
            pointer(6, "appProtocol", Type::String),
        ],
    ),
    (
        "SessionAffinityConfig",
        &[pointer(1, "clientIP", Type::Message("ClientIPConfig"))],
    ),
    (
        "ClientIPConfig",
        &[pointer(1, "timeoutSeconds", Type::Int32)],
    ),
];

/// Reads a protobuf request body into the JSON object it encodes, with `apiVersion` and `kind`
/// from its envelope. Only Namespaces and Services are accepted.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err("the body does not start with the protobuf magic bytes \"k8s\\x00\"".into());
    };
    let unknown = read_unknown(envelope)?;
    if !unknown.content_encoding.is_empty() {
        return Err(format!(
            "protobuf content encoding {:?} is not supported",
            unknown.content_encoding
        ));
    }
    let message = match unknown.kind.as_str() {
        "Namespace" => "Namespace",
        "Service" => "Service",
        "" => return Err("the protobuf envelope names no kind".into()),
        other => {
            return Err(format!(
                "protobuf bodies are accepted for Namespace and Service only; send JSON for {other}"
            ));
        }
    };
    let fields = read_message(message, &unknown.raw)?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(unknown.api_version));
    object.insert("kind".into(), json!(unknown.kind));
    object.extend(fields);
    Ok(Value::Object(object))
}

/// `runtime.Unknown`: {1 typeMeta {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding,
/// 4 contentType}.
#[derive(Debug, Default)]
struct Unknown {
    api_version: String,
    kind: String,
    raw: Vec<u8>,
    content_encoding: String,
}

fn read_unknown(bytes: &[u8]) -> Result<Unknown, String> {
    let mut unknown = Unknown::default();
    let mut reader = Reader::new(bytes);
    while let Some((number, wire)) = reader.tag()? {
        match (number, wire) {
            (1, Wire::Len(type_meta)) => {
                let mut inner = Reader::new(type_meta);
                while let Some((number, wire)) = inner.tag()? {
                    match (number, wire) {
                        (1, Wire::Len(b)) => unknown.api_version = text(b, "apiVersion")?,
                        (2, Wire::Len(b)) => unknown.kind = text(b, "kind")?,
                        (1 | 2, _) => return Err(mismatch("TypeMeta", number)),
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(raw)) => unknown.raw = raw.to_vec(),
            (3, Wire::Len(b)) => unknown.content_encoding = text(b, "contentEncoding")?,
            (1..=3, _) => return Err(mismatch("Unknown", number)),
            _ => {}
        }
    }
    Ok(unknown)
}

fn schema(message: &str) -> &'static [Field] {
    MESSAGES
        .iter()
        .find(|(name, _)| *name == message)
        .map(|(_, fields)| *fields)
        .expect("every message the tables name is in them")
}

/// Reads one message by its table into JSON fields, leaving out zero values where Go's JSON
/// would.
fn read_message(message: &'static str, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let fields = schema(message);
    let mut out = Map::new();
    let mut reader = Reader::new(bytes);
    while let Some((number, wire)) = reader.tag()? {
        let Some(field) = fields.iter().find(|f| f.number == number) else {
            continue;
        };
        let item = read_value(message, field, wire)?;
        match field.card {
            Card::Repeated => {
                let list = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = list {
                    list.push(item);
                }
            }
            Card::Pointer | Card::Always => {
                out.insert(field.json.into(), item);
            }
            Card::Value if is_zero(&item) => {
                out.remove(field.json);
            }
            Card::Value => match (out.get_mut(field.json), item) {
                // Map entries arrive one by one.
                (Some(Value::Object(map)), Value::Object(more)) if field.ty.is_map() => {
                    map.extend(more);
                }
                (_, item) => {
                    out.insert(field.json.into(), item);
                }
            },
        }
    }
    Ok(out)
}

impl Type {
    fn is_map(self) -> bool {
        matches!(self, Type::StringMap)
    }
}

/// A scalar Go's JSON leaves out under `omitempty`. Messages (objects) always show, except the
/// empty IntOrString, which reads as null.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        Value::Array(_) | Value::Object(_) => false,
    }
}

fn read_value(message: &str, field: &Field, wire: Wire<'_>) -> Result<Value, String> {
    let wrong = || mismatch(message, field.number);
    Ok(match (field.ty, wire) {
        (Type::String, Wire::Len(b)) => Value::String(text(b, field.json)?),
        // Two's complement truncation, as protobuf defines int32 and int64 on the wire.
        (Type::Int32, Wire::Varint(v)) => json!(v as i32),
        (Type::Int64, Wire::Varint(v)) => json!(v as i64),
        (Type::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        (Type::Message(name), Wire::Len(b)) => Value::Object(read_message(name, b)?),
        (Type::StringMap, Wire::Len(b)) => {
            let (key, value) = read_entry(b, field.json)?;
            let mut map = Map::new();
            map.insert(key, Value::String(value));
            Value::Object(map)
        }
        (Type::IntOrString, Wire::Len(b)) => read_int_or_string(b, field.json)?,
        _ => return Err(wrong()),
    })
}

/// A `map<string, string>` entry: {1 key, 2 value}, either possibly absent (empty).
fn read_entry(bytes: &[u8], what: &str) -> Result<(String, String), String> {
    let (mut key, mut value) = (String::new(), String::new());
    let mut reader = Reader::new(bytes);
    while let Some((number, wire)) = reader.tag()? {
        match (number, wire) {
            (1, Wire::Len(b)) => key = text(b, what)?,
            (2, Wire::Len(b)) => value = text(b, what)?,
            (1 | 2, _) => {
                return Err(format!(
                    "a {what} entry has a field {number} of a wrong type"
                ));
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// IntOrString {1 type (0 int, 1 string), 2 intVal, 3 strVal}; null when unset (zero).
fn read_int_or_string(bytes: &[u8], what: &str) -> Result<Value, String> {
    let (mut kind, mut int, mut string) = (0i64, 0i32, String::new());
    let mut reader = Reader::new(bytes);
    while let Some((number, wire)) = reader.tag()? {
        match (number, wire) {
            (1, Wire::Varint(v)) => kind = v as i64,
            (2, Wire::Varint(v)) => int = v as i32,
            (3, Wire::Len(b)) => string = text(b, what)?,
            (1..=3, _) => return Err(mismatch("IntOrString", number)),
            _ => {}
        }
    }
    Ok(match kind {
        0 if int == 0 => Value::Null,
        0 => json!(int),
        1 if string.is_empty() => Value::Null,
        1 => Value::String(string),
        other => {
            return Err(format!(
                "{what} has an IntOrString type {other}, not 0 or 1"
            ));
        }
    })
}

fn text(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
}

fn mismatch(message: &str, number: u64) -> String {
    format!("field {number} of {message} has the wrong wire type")
}

/// One field's payload on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
    /// fixed32 and fixed64, which no field read here uses.
    Fixed,
}

/// A protobuf reader over one message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// The next field's number and payload, or None at the end of the message.
    fn tag(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid protobuf field number {number}"));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| truncated())?;
                Wire::Len(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            other => {
                return Err(format!(
                    "unsupported protobuf wire type {other} (field {number})"
                ));
            }
        };
        Ok(Some((number, wire)))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for (i, byte) in self.bytes.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        if self.bytes.len() >= 10 {
            Err("a protobuf varint is longer than 10 bytes".into())
        } else {
            Err(truncated())
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < len {
            return Err(truncated());
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }
}

fn truncated() -> String {
    "the protobuf data is truncated".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A tiny encoder for hand-built bodies.

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn int(number: u64, v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(number << 3, &mut out);
        varint(v as u64, &mut out);
        out
    }

    fn len(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((number << 3) | 2, &mut out);
        varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    fn s(number: u64, text: &str) -> Vec<u8> {
        len(number, text.as_bytes())
    }

    fn msg(number: u64, parts: &[Vec<u8>]) -> Vec<u8> {
        len(number, &parts.concat())
    }

    fn entry(number: u64, key: &str, value: &str) -> Vec<u8> {
        msg(number, &[s(1, key), s(2, value)])
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(msg(1, &[s(1, api_version), s(2, kind)]));
        out.extend(len(2, raw));
        out.extend(s(3, ""));
        out.extend(s(4, ""));
        out
    }

    /// ObjectMeta as Go writes it: every string field, empty or not, and an empty timestamp.
    fn meta(name: &str, extra: &[Vec<u8>]) -> Vec<u8> {
        let mut parts = vec![
            s(1, name),
            s(2, ""),
            s(3, ""),
            s(4, ""),
            s(5, ""),
            s(6, ""),
            int(7, 0),
            msg(8, &[]),
        ];
        parts.extend_from_slice(extra);
        msg(1, &parts)
    }

    #[test]
    fn a_namespace_as_kubectl_create_namespace_sends_it_reads_as_its_json() {
        // The exact bytes kubectl 1.32 sends for `kubectl create namespace foo`.
        let body: &[u8] = b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x1b\x0a\x13\x0a\x03foo\
            \x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x00\x1a\x02\x0a\x00\
            \x1a\x00\x22\x00";
        assert_eq!(
            decode(body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo"},
                   "spec": {}, "status": {}})
        );
    }

    #[test]
    fn a_namespace_keeps_its_maps_finalizers_and_phase() {
        let raw = [
            meta(
                "team-a",
                &[
                    entry(11, "team", "a"),
                    entry(11, "empty", ""),
                    entry(12, "note", "hello"),
                    s(14, "example.com/keep"),
                    s(14, "example.com/also"),
                ],
            ),
            msg(2, &[s(1, "kubernetes")]),
            msg(3, &[s(1, "Active")]),
        ]
        .concat();
        assert_eq!(
            decode(&envelope("v1", "Namespace", &raw)).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": "team-a",
                    "labels": {"team": "a", "empty": ""},
                    "annotations": {"note": "hello"},
                    "finalizers": ["example.com/keep", "example.com/also"],
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            })
        );
    }

    /// A ServicePort as Go writes it: all value fields, zero or not.
    fn port(name: &str, number: i64, target: Vec<u8>, node_port: i64) -> Vec<u8> {
        msg(
            1,
            &[
                s(1, name),
                s(2, "TCP"),
                int(3, number),
                len(4, &target),
                int(5, node_port),
            ],
        )
    }

    #[test]
    fn a_service_reads_ports_selector_and_spec_fields_leaving_zero_values_out() {
        let spec = [
            port("http", 80, [int(1, 0), int(2, 8080), s(3, "")].concat(), 0),
            port(
                "dns",
                53,
                [int(1, 1), int(2, 0), s(3, "dns")].concat(),
                30053,
            ),
            port("same", 443, [int(1, 0), int(2, 0), s(3, "")].concat(), 0),
            entry(2, "app", "web"),
            entry(2, "tier", "front"),
            s(3, ""),
            s(4, "NodePort"),
            s(5, "192.0.2.1"),
            s(5, "192.0.2.2"),
            s(7, "ClientIP"),
            s(8, ""),
            s(10, ""),
            s(11, "Local"),
            int(12, 0),
            int(13, 1),
            msg(14, &[msg(1, &[int(1, 600)])]),
            s(17, "SingleStack"),
            s(19, "IPv4"),
            int(20, 0),
            s(22, "Cluster"),
        ];
        let raw = [
            meta("web", &[entry(11, "app", "web")]),
            msg(2, &spec),
            msg(3, &[msg(1, &[])]),
        ]
        .concat();
        assert_eq!(
            decode(&envelope("v1", "Service", &raw)).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "ports": [
                        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                        {"name": "dns", "protocol": "TCP", "port": 53, "targetPort": "dns",
                         "nodePort": 30053},
                        {"name": "same", "protocol": "TCP", "port": 443},
                    ],
                    "selector": {"app": "web", "tier": "front"},
                    "type": "NodePort",
                    "externalIPs": ["192.0.2.1", "192.0.2.2"],
                    "sessionAffinity": "ClientIP",
                    "externalTrafficPolicy": "Local",
                    "publishNotReadyAddresses": true,
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                    "ipFamilyPolicy": "SingleStack",
                    "ipFamilies": ["IPv4"],
                    "allocateLoadBalancerNodePorts": false,
                    "internalTrafficPolicy": "Cluster",
                },
            })
        );
    }

    #[test]
    fn an_external_name_service_reads_its_name_and_cluster_ips() {
        let spec = [
            s(3, "None"),
            s(4, "ExternalName"),
            s(10, "db.example.com"),
            s(18, "None"),
            s(21, "example.com/lb"),
            s(9, "10.0.0.0/8"),
            int(12, 31000),
        ];
        let raw = [meta("db", &[]), msg(2, &spec)].concat();
        assert_eq!(
            decode(&envelope("v1", "Service", &raw)).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "db"},
                "spec": {
                    "clusterIP": "None",
                    "type": "ExternalName",
                    "externalName": "db.example.com",
                    "clusterIPs": ["None"],
                    "loadBalancerClass": "example.com/lb",
                    "loadBalancerSourceRanges": ["10.0.0.0/8"],
                    "healthCheckNodePort": 31000,
                },
            })
        );
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut fixed64 = Vec::new();
        varint((40 << 3) | 1, &mut fixed64);
        fixed64.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        let mut fixed32 = Vec::new();
        varint((41 << 3) | 5, &mut fixed32);
        fixed32.extend([1, 2, 3, 4]);
        let raw = [
            meta("x", &[msg(13, &[s(1, "Owner")]), int(99, 7)]),
            fixed64,
            fixed32,
            s(42, "ignored"),
            int(43, -1),
        ]
        .concat();
        assert_eq!(
            decode(&envelope("v1", "Namespace", &raw)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
        );
    }

    #[test]
    fn negative_int32_values_read_back_from_ten_byte_varints() {
        let spec = [port("p", 80, [int(1, 0), int(2, -1)].concat(), 0)];
        let raw = [meta("neg", &[]), msg(2, &spec)].concat();
        let decoded = decode(&envelope("v1", "Service", &raw)).unwrap();
        assert_eq!(decoded["spec"]["ports"][0]["targetPort"], json!(-1));
    }

    #[test]
    fn a_body_without_the_magic_is_refused() {
        let err = decode(b"{\"kind\": \"Namespace\"}").unwrap_err();
        assert_eq!(
            err,
            "the body does not start with the protobuf magic bytes \"k8s\\x00\""
        );
        assert!(decode(b"k8s").is_err());
    }

    #[test]
    fn other_kinds_are_refused_with_a_pointer_to_json() {
        let raw = meta("p", &[]);
        assert_eq!(
            decode(&envelope("v1", "Pod", &raw)).unwrap_err(),
            "protobuf bodies are accepted for Namespace and Service only; send JSON for Pod"
        );
        assert_eq!(
            decode(&envelope("v1", "", &raw)).unwrap_err(),
            "the protobuf envelope names no kind"
        );
    }

    #[test]
    fn truncated_data_is_refused_wherever_it_ends() {
        let raw = [
            meta("web", &[entry(11, "app", "web")]),
            msg(2, &[s(4, "ClusterIP")]),
        ]
        .concat();
        let body = envelope("v1", "Service", &raw);
        assert!(decode(&body).is_ok());
        // Every cut inside the envelope's first two fields leaves a length or a varint
        // unfinished; a cut between them leaves a whole (if empty) envelope.
        let between = MAGIC.len() + msg(1, &[s(1, "v1"), s(2, "Service")]).len();
        let end_of_raw = body.len() - 4;
        for cut in (MAGIC.len() + 1..end_of_raw).filter(|&cut| cut != between) {
            let err = decode(&body[..cut]).unwrap_err();
            assert_eq!(err, "the protobuf data is truncated", "cut at {cut}");
        }
        // A nested length running past its message.
        let mut bad = raw.clone();
        bad.extend([(2 << 3) | 2, 50, b'x']);
        assert_eq!(
            decode(&envelope("v1", "Service", &bad)).unwrap_err(),
            "the protobuf data is truncated"
        );
    }

    #[test]
    fn malformed_fields_are_refused() {
        // A string field sent as a varint.
        let raw = [meta("web", &[]), msg(2, &[int(4, 1)])].concat();
        assert_eq!(
            decode(&envelope("v1", "Service", &raw)).unwrap_err(),
            "field 4 of ServiceSpec has the wrong wire type"
        );
        // Invalid UTF-8 in a name.
        let raw = msg(1, &[len(1, &[0xff, 0xfe])]);
        assert_eq!(
            decode(&envelope("v1", "Namespace", &raw)).unwrap_err(),
            "name is not valid UTF-8"
        );
        // A group (wire type 3), which Kubernetes never writes.
        let raw = vec![(1 << 3) | 3];
        assert_eq!(
            decode(&envelope("v1", "Namespace", &raw)).unwrap_err(),
            "unsupported protobuf wire type 3 (field 1)"
        );
        // Field number 0.
        let raw = vec![0, 0];
        assert_eq!(
            decode(&envelope("v1", "Namespace", &raw)).unwrap_err(),
            "invalid protobuf field number 0"
        );
        // An over-long varint.
        let raw = [vec![1 << 3], vec![0xff; 11]].concat();
        assert_eq!(
            decode(&envelope("v1", "Namespace", &raw)).unwrap_err(),
            "a protobuf varint is longer than 10 bytes"
        );
        // A compressed payload.
        let mut body = MAGIC.to_vec();
        body.extend(msg(1, &[s(1, "v1"), s(2, "Namespace")]));
        body.extend(s(3, "gzip"));
        assert_eq!(
            decode(&body).unwrap_err(),
            "protobuf content encoding \"gzip\" is not supported"
        );
    }
}
