//! The HTTP surface: routes Kubernetes REST paths to the registry and watches, renders
//! objects, lists, Tables and Status errors, and checks bearer tokens and writes the audit log
//! on the way through.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::discovery;
use crate::error::ApiError;
use crate::object::FieldValidation;
use crate::registry::{
    DeleteOptions, ListOptions, ListResult, Part, PatchType, Propagation, Registry, WriteOptions,
};
use crate::resource::{RESOURCES, Resource};
use crate::selector::{FieldSelector, LabelSelector, supported_fields};
use crate::watch::{self, WatchOptions};

/// Shared state of every request.
pub struct App {
    pub registry: Registry,
    /// What `/api` reports as the server's address.
    pub server_address: String,
    pub bookmark_interval: Duration,
    /// Watches without `timeoutSeconds` end after a random time in [this, 2 × this].
    pub min_request_timeout: Duration,
    /// Bearer token → user name; None means no authentication (loopback only).
    pub tokens: Option<HashMap<String, String>>,
    pub audit: Option<Mutex<std::fs::File>>,
    /// The biggest body accepted.
    pub max_body: usize,
}

/// The router: everything goes through [`handle`].
pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(app)
}

/// What a request is, for routing and the audit log.
#[derive(Debug, Default, Clone)]
struct Info {
    verb: &'static str,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
    /// The deprecation warning of the resource asked for, sent with every answer about it.
    deprecation: Option<&'static str>,
}

enum Target {
    /// A non-resource path answered with this body.
    Document(Value),
    Text(&'static str),
    Resource {
        resource: &'static Resource,
        namespace: Option<String>,
        name: Option<String>,
        status: bool,
    },
}

async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut info = Info::default();
    let mut user = String::from("system:anonymous");
    let mut response = match authenticate(&app, &request) {
        Ok(u) => {
            if let Some(u) = u {
                user = u;
            }
            match serve(&app, request, &mut info).await {
                Ok(response) => response,
                Err(e) => error_response(&e),
            }
        }
        Err(e) => {
            // A refused request is audited with what it asked for.
            info = describe(&app, &request);
            error_response(&e)
        }
    };
    if let Some(warning) = info.deprecation {
        append_warning(&mut response, warning);
    }
    if let Some(audit) = &app.audit {
        let entry = json!({
            "time": jiff::Timestamp::now().to_string(),
            "user": user,
            "userAgent": user_agent,
            "verb": info.verb,
            "resource": info.resource,
            "subresource": info.subresource,
            "namespace": info.namespace,
            "name": info.name,
            "code": response.status().as_u16(),
        });
        let mut line = serde_json::to_vec(&entry).expect("JSON values serialize");
        line.push(b'\n');
        let mut file = audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
    response
}

fn authenticate(app: &App, request: &Request) -> Result<Option<String>, ApiError> {
    let Some(tokens) = &app.tokens else {
        return Ok(None);
    };
    if matches!(
        request.uri().path(),
        "/healthz" | "/livez" | "/readyz" | "/version"
    ) {
        return Ok(None);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|t| tokens.get(t)) {
        Some(user) => Ok(Some(user.clone())),
        None => Err(ApiError::unauthorized()),
    }
}

/// The `Status` response of an error.
pub fn error_response(e: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
        &[],
    )
}

fn json_response(status: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut response = Response::new(Body::from(
        serde_json::to_vec(body).expect("JSON values serialize"),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for warning in warnings {
        append_warning(&mut response, warning);
    }
    response
}

/// Adds a `Warning: 299 - "…"` header, as kube-apiserver sends warnings to clients.
fn append_warning(response: &mut Response, warning: &str) {
    let text = format!("299 - {:?}", warning);
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(header::WARNING, value);
    }
}

fn table_response(body: &Value) -> Response {
    let mut response = json_response(StatusCode::OK, body, &[]);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
    );
    response
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            // Honour the first acceptable type, as content negotiation does.
            accept
                .split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn route(path: &str, app: &App) -> Result<Target, ApiError> {
    // Only a trailing slash is dropped: an empty segment (an empty namespace or name) is not
    // skipped over into another path.
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let doc = |v: Option<Value>| {
        v.map(Target::Document)
            .ok_or_else(ApiError::no_such_resource)
    };
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Ok(Target::Document(discovery::version())),
        ["healthz"] | ["livez"] | ["readyz"] => return Ok(Target::Text("ok")),
        ["api"] => {
            return Ok(Target::Document(discovery::api_versions(
                &app.server_address,
            )));
        }
        ["apis"] => return Ok(Target::Document(discovery::api_group_list())),
        ["apis", group] => return doc(discovery::api_group(group)),
        ["openapi", "v3"] => return Ok(Target::Document(discovery::openapi_root())),
        ["openapi", "v3", rest @ ..] => return doc(discovery::openapi_document(&rest.join("/"))),
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_such_resource()),
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .ok_or_else(ApiError::no_such_resource)
    };
    let resource_target = |resource: &'static Resource,
                           namespace: Option<&str>,
                           name: Option<&str>,
                           sub: Option<&str>| {
        if namespace == Some("") || name == Some("") {
            return Err(ApiError::no_such_resource());
        }
        let status = match sub {
            None => false,
            Some("status") if resource.status => true,
            Some(_) => return Err(ApiError::no_such_resource()),
        };
        Ok(Target::Resource {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            status,
        })
    };
    match rest {
        [] => doc(discovery::resource_list(group, version)),
        ["namespaces", ns, plural, tail @ ..]
            if group.is_empty() && !matches!(*plural, "status" | "finalize")
                || !group.is_empty() && rest[0] == "namespaces" =>
        {
            let resource = find(plural)?;
            if !resource.namespaced {
                return Err(ApiError::no_such_resource());
            }
            match tail {
                [] => resource_target(resource, Some(ns), None, None),
                [name] => resource_target(resource, Some(ns), Some(name), None),
                [name, sub] => resource_target(resource, Some(ns), Some(name), Some(sub)),
                _ => Err(ApiError::no_such_resource()),
            }
        }
        [plural, tail @ ..] => {
            let resource = find(plural)?;
            match tail {
                [] => resource_target(resource, None, None, None),
                [name] if !resource.namespaced => resource_target(resource, None, Some(name), None),
                [name, sub] if !resource.namespaced => {
                    resource_target(resource, None, Some(name), Some(sub))
                }
                _ => Err(ApiError::no_such_resource()),
            }
        }
    }
}

async fn serve(app: &App, request: Request, info: &mut Info) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let target = route(parts.uri.path(), app)?;
    let (resource, namespace, name, status) = match target {
        Target::Document(value) => {
            info.verb = "get";
            return if parts.method == Method::GET {
                Ok(json_response(StatusCode::OK, &value, &[]))
            } else {
                Err(ApiError::method_not_allowed())
            };
        }
        Target::Text(text) => {
            info.verb = "get";
            if parts.uri.path() == "/readyz" && !app.registry.storage().ready().await {
                return Err(ApiError::unavailable("storage is not answering"));
            }
            let mut response = Response::new(Body::from(text));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(response);
        }
        Target::Resource {
            resource,
            namespace,
            name,
            status,
        } => (resource, namespace, name, status),
    };
    let query = query_map(parts.uri.query());
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    info.resource = resource.plural.to_string();
    info.deprecation = resource.deprecation();
    info.subresource = if status {
        "status".into()
    } else {
        String::new()
    };
    info.namespace = namespace.clone().unwrap_or_default();
    info.name = name.clone().unwrap_or_default();
    info.verb = verb_of(&parts.method, name.is_some(), watching)
        .ok_or_else(ApiError::method_not_allowed)?;
    if resource.kind == "Namespace" && info.verb == "deletecollection" {
        // As upstream: namespaces go one at a time.
        return Err(ApiError::method_not_allowed());
    }
    let cluster_wide_namespaced = resource.namespaced && namespace.is_none();
    if cluster_wide_namespaced && !matches!(info.verb, "list" | "watch") {
        return Err(ApiError::method_not_allowed());
    }
    let ns = namespace.as_deref();
    let registry = &app.registry;
    let table = wants_table(&parts.headers);
    let part = if status { Part::Status } else { Part::Main };
    let body = axum::body::to_bytes(body, app.max_body)
        .await
        .map_err(|e| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body could not be read: {e}"),
            )
        })?;
    let write = || write_options(&query);
    match info.verb {
        "get" => {
            let object = registry
                .get(resource, ns, name.as_deref().unwrap_or_default())
                .await?;
            if table {
                let rv = crate::object::meta_str(&object, "resourceVersion").to_string();
                return Ok(table_response(&crate::table::table(
                    resource.kind,
                    &[object],
                    &rv,
                    None,
                    jiff::Timestamp::now(),
                )));
            }
            Ok(json_response(StatusCode::OK, &object, &[]))
        }
        "list" => {
            let options = list_options(resource, &query)?;
            let listed = registry.list(resource, ns, &options).await?;
            Ok(list_response(resource, listed, table))
        }
        "watch" => {
            let options = watch_options(app, resource, &query, table)?;
            let lines = watch::start(registry.clone(), resource, namespace, options).await?;
            let stream = futures::stream::unfold(lines, |mut lines| async move {
                lines
                    .recv()
                    .await
                    .map(|line| (Ok::<Bytes, std::io::Error>(line), lines))
            });
            let mut response = Response::new(Body::from_stream(stream));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
            Ok(response)
        }
        "create" => {
            if status {
                return Err(ApiError::method_not_allowed());
            }
            let value = parse_body(&parts.headers, &body)?;
            let written = registry.create(resource, ns, value, write()?).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &written.object,
                &written.warnings,
            ))
        }
        "update" => {
            let value = parse_body(&parts.headers, &body)?;
            let written = registry
                .replace(
                    resource,
                    ns,
                    name.as_deref().unwrap_or_default(),
                    part,
                    value,
                    write()?,
                )
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &written.object,
                &written.warnings,
            ))
        }
        "patch" => {
            let patch_type = patch_type(&parts.headers)?;
            let patch: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let written = registry
                .patch(
                    resource,
                    ns,
                    name.as_deref().unwrap_or_default(),
                    part,
                    patch_type,
                    patch,
                    write()?,
                )
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &written.object,
                &written.warnings,
            ))
        }
        "delete" => {
            if status {
                return Err(ApiError::method_not_allowed());
            }
            let options = delete_options(&query, &body)?;
            let object = registry
                .delete(resource, ns, name.as_deref().unwrap_or_default(), &options)
                .await?;
            Ok(json_response(StatusCode::OK, &object, &[]))
        }
        "deletecollection" => {
            if status {
                return Err(ApiError::method_not_allowed());
            }
            let options = delete_options(&query, &body)?;
            let list = list_options(resource, &query)?;
            let deleted = registry
                .delete_collection(resource, ns, &list, &options)
                .await?;
            Ok(list_response(resource, deleted, false))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The Kubernetes verb of a request on a resource.
fn verb_of(method: &Method, named: bool, watching: bool) -> Option<&'static str> {
    Some(match (method, named) {
        (&Method::GET, false) if watching => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return None,
    })
}

/// What a request asks for, for the audit log of a request refused before it is served.
fn describe(app: &App, request: &Request) -> Info {
    let Ok(Target::Resource {
        resource,
        namespace,
        name,
        status,
    }) = route(request.uri().path(), app)
    else {
        return Info::default();
    };
    let query = query_map(request.uri().query());
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    Info {
        verb: verb_of(request.method(), name.is_some(), watching).unwrap_or(""),
        resource: resource.plural.to_string(),
        subresource: if status {
            "status".into()
        } else {
            String::new()
        },
        namespace: namespace.unwrap_or_default(),
        name: name.unwrap_or_default(),
        deprecation: resource.deprecation(),
    }
}

fn list_response(resource: &Resource, listed: ListResult, table: bool) -> Response {
    let revision = listed.revision.to_string();
    if table {
        let body = crate::table::table(
            resource.kind,
            &listed.items,
            &revision,
            listed.continue_token.as_deref(),
            jiff::Timestamp::now(),
        );
        return table_response(&body);
    }
    let mut metadata = json!({"resourceVersion": revision});
    if let Some(token) = &listed.continue_token {
        metadata["continue"] = json!(token);
    }
    let body = json!({
        "kind": resource.list_kind(),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": listed.items,
    });
    json_response(StatusCode::OK, &body, &[])
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        }),
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| {
                ApiError::bad_request(format!("couldn't get version/kind; yaml parse error: {e}"))
            }),
        // kubectl's `create namespace` and `create service` generators send protobuf.
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body).map_err(|e| {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request could not be read as {media} - {e}"),
            )
        }),
        _ => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {media})"
            ),
        )),
    }
}

fn patch_type(headers: &HeaderMap) -> Result<PatchType, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match content_type.split(';').next().unwrap_or("").trim() {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        // Server-side apply included: kubectl then says it is not available, and exits.
        _ => Err(ApiError::unsupported_media_type()),
    }
}

fn write_options(query: &HashMap<String, String>) -> Result<WriteOptions, ApiError> {
    Ok(WriteOptions {
        dry_run: dry_run(query.get("dryRun").map(String::as_str))?,
        validation: FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?,
    })
}

fn dry_run(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
        ))),
    }
}

fn parse_u64(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "{name}: Invalid value: \"{text}\": must be a non-negative integer"
            ))
        }),
    }
}

fn selectors(
    resource: &Resource,
    query: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = match query.get("labelSelector") {
        Some(text) => LabelSelector::parse(text).map_err(ApiError::bad_request)?,
        None => LabelSelector::default(),
    };
    let fields = match query.get("fieldSelector") {
        Some(text) => FieldSelector::parse(text, supported_fields(resource.kind))
            .map_err(ApiError::bad_request)?,
        None => FieldSelector::default(),
    };
    Ok((labels, fields))
}

fn list_options(
    resource: &Resource,
    query: &HashMap<String, String>,
) -> Result<ListOptions, ApiError> {
    let (labels, fields) = selectors(resource, query)?;
    let limit = parse_u64(query, "limit")?
        .filter(|l| *l > 0)
        .map(|l| l as usize);
    let continue_token = query.get("continue").filter(|c| !c.is_empty()).cloned();
    let resource_version = parse_u64(query, "resourceVersion")?;
    let exact = match query.get("resourceVersionMatch").map(String::as_str) {
        None | Some("") | Some("NotOlderThan") => None,
        Some("Exact") => match resource_version {
            Some(rv) if rv > 0 => Some(rv),
            _ => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\" or unset",
                ));
            }
        },
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
    };
    if continue_token.is_some() && resource_version.is_some_and(|rv| rv > 0) {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    Ok(ListOptions {
        labels,
        fields,
        limit,
        continue_token,
        exact_revision: exact,
    })
}

fn watch_options(
    app: &App,
    resource: &Resource,
    query: &HashMap<String, String>,
    table: bool,
) -> Result<WatchOptions, ApiError> {
    let (labels, fields) = selectors(resource, query)?;
    let flag = |name: &str| matches!(query.get(name).map(String::as_str), Some("true" | "1"));
    let bookmarks = flag("allowWatchBookmarks");
    let send_initial_events = flag("sendInitialEvents");
    if send_initial_events
        && (!bookmarks
            || query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan"))
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            "sendInitialEvents: Forbidden: sendInitialEvents is allowed with allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
        ));
    }
    let timeout = match parse_u64(query, "timeoutSeconds")? {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds),
        // None, or 0, which upstream also takes as "the default".
        _ => {
            let base = app.min_request_timeout;
            base + base.mul_f64(rand::random::<f64>())
        }
    };
    Ok(WatchOptions {
        list: ListOptions {
            labels,
            fields,
            ..ListOptions::default()
        },
        resource_version: parse_u64(query, "resourceVersion")?,
        bookmarks,
        send_initial_events,
        timeout,
        progress_interval: app.bookmark_interval,
        table,
    })
}

fn delete_options(query: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut options = DeleteOptions {
        dry_run: dry_run(query.get("dryRun").map(String::as_str))?,
        grace_period_seconds: parse_u64(query, "gracePeriodSeconds")?.map(|g| g as i64),
        propagation: query
            .get("propagationPolicy")
            .map(|p| Propagation::parse(p))
            .transpose()?,
        ..DeleteOptions::default()
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(options);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the DeleteOptions body is not JSON: {e}")))?;
    if let Some(uid) = value.pointer("/preconditions/uid").and_then(Value::as_str) {
        options.uid = Some(uid.to_string());
    }
    if let Some(rv) = value
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        options.resource_version = Some(rv.to_string());
    }
    if let Some(grace) = value.get("gracePeriodSeconds").and_then(Value::as_i64) {
        options.grace_period_seconds = Some(grace);
    }
    if let Some(policy) = value.get("propagationPolicy").and_then(Value::as_str) {
        options.propagation = Some(Propagation::parse(policy)?);
    } else if value.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
        options.propagation = Some(Propagation::Orphan);
    }
    if let Some(dry) = value.get("dryRun").and_then(Value::as_array) {
        for d in dry {
            options.dry_run |= dry_run(d.as_str())?;
        }
    }
    Ok(options)
}
