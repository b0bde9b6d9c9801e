//! Watches as kube-apiserver serves them: initial ADDED events for a resourceVersion of "0" or
//! none, changes after a given revision, selector transitions as ADDED/DELETED, DELETED
//! carrying the deletion revision, bookmarks (periodic, before the timeout, and the
//! initial-events-end one of streaming lists), and "too old" as an in-stream 410 ERROR event.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::object;
use crate::registry::{ListOptions, Registry};
use crate::resource::Resource;
use crate::storage::Change;

/// A watch request.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub list: ListOptions,
    /// The `resourceVersion` parameter: None or Some(0) mean "current state, then changes".
    pub resource_version: Option<u64>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub progress_interval: Duration,
    /// Render each event's object as a one-row Table (kubectl's `get -w`).
    pub table: bool,
}

/// What the HTTP layer streams: one JSON line per event.
pub type Lines = mpsc::Receiver<Bytes>;

fn line(kind: &str, object: Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("JSON values serialize");
    text.push(b'\n');
    Bytes::from(text)
}

struct Sink<'a> {
    resource: &'a Resource,
    options: &'a WatchOptions,
    sender: mpsc::Sender<Bytes>,
}

impl Sink<'_> {
    async fn event(&self, kind: &str, object: Value) -> bool {
        let object = if self.options.table {
            crate::table::table(
                self.resource.kind,
                std::slice::from_ref(&object),
                object::meta_str(&object, "resourceVersion"),
                None,
                jiff::Timestamp::now(),
            )
        } else {
            object
        };
        self.sender.send(line(kind, object)).await.is_ok()
    }

    async fn bookmark(&self, revision: u64, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": metadata});
        self.sender.send(line("BOOKMARK", object)).await.is_ok()
    }

    async fn error(&self, e: &ApiError) {
        let _ = self.sender.send(line("ERROR", e.to_status())).await;
    }
}

/// Starts a watch; its lines arrive on the returned channel until the timeout, an error
/// event, or the client going away. Errors before the stream starts are returned as such.
pub async fn start(
    registry: Registry,
    resource: &'static Resource,
    namespace: Option<String>,
    options: WatchOptions,
) -> Result<Lines, ApiError> {
    let (sender, receiver) = mpsc::channel(256);
    let initial = matches!(options.resource_version, None | Some(0)) || options.send_initial_events;
    // The snapshot for initial events is read before answering, so list errors are HTTP errors.
    let (snapshot, from) = if initial {
        let mut list = options.list.clone();
        list.limit = None;
        list.continue_token = None;
        list.exact_revision = None;
        let listed = registry.list(resource, namespace.as_deref(), &list).await?;
        (Some(listed.items), listed.revision)
    } else {
        (None, options.resource_version.unwrap_or(0))
    };
    let prefix = registry.collection_key(resource, namespace.as_deref());
    let changes = registry
        .storage()
        .watch(&prefix, from, options.progress_interval)
        .await;
    tokio::spawn(async move {
        let sink = Sink {
            resource,
            options: &options,
            sender,
        };
        let deadline = tokio::time::sleep(options.timeout);
        tokio::pin!(deadline);
        let mut last = from;
        if let Some(items) = snapshot {
            for item in items {
                if !sink.event("ADDED", item).await {
                    return;
                }
            }
            if options.send_initial_events && !sink.bookmark(from, true).await {
                return;
            }
        }
        let mut changes = match changes {
            Ok(changes) => changes,
            Err(e) => return sink.error(&e).await,
        };
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    if options.bookmarks {
                        sink.bookmark(last, false).await;
                    }
                    return;
                }
                _ = sink.sender.closed() => return,
                change = changes.next() => {
                    let Some(change) = change else { return };
                    let change = match change {
                        Ok(change) => change,
                        Err(e) => return sink.error(&e).await,
                    };
                    last = last.max(change.revision());
                    let delivered = match to_event(resource, &change, &options.list) {
                        Ok(Some((kind, object))) => sink.event(kind, object).await,
                        Ok(None) => true,
                        Err(e) => {
                            sink.error(&e).await;
                            return;
                        }
                    };
                    if !delivered {
                        return;
                    }
                    // A bookmark never goes back before what was already sent.
                    if let Change::Progress { revision } = change
                        && options.bookmarks
                        && !sink.bookmark(last.max(revision), false).await
                    {
                        return;
                    }
                }
            }
        }
    });
    Ok(receiver)
}

fn decode(resource: &Resource, kv: &crate::storage::Kv, revision: u64) -> Result<Value, ApiError> {
    let object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    Ok(object::with_revision(
        resource.from_storage(object),
        revision,
    ))
}

fn matches(object: &Value, list: &ListOptions) -> bool {
    let empty = serde_json::Map::new();
    let labels = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    list.labels.matches(labels) && list.fields.matches(object)
}

/// The watch event a storage change is for this watcher, if any.
fn to_event(
    resource: &Resource,
    change: &Change,
    list: &ListOptions,
) -> Result<Option<(&'static str, Value)>, ApiError> {
    match change {
        Change::Progress { .. } => Ok(None),
        Change::Put { kv, prev } => {
            let now = decode(resource, kv, kv.mod_revision)?;
            let was = match prev {
                Some(prev) => matches(&decode(resource, prev, prev.mod_revision)?, list),
                None => false,
            };
            let is = matches(&now, list);
            Ok(match (was, is) {
                (false, true) => Some(("ADDED", now)),
                (true, true) => Some(("MODIFIED", now)),
                // Left the selection: gone from this watcher's point of view.
                (true, false) => Some(("DELETED", now)),
                (false, false) => None,
            })
        }
        Change::Delete { prev, revision } => {
            let last = decode(resource, prev, *revision)?;
            Ok(matches(&last, list).then_some(("DELETED", last)))
        }
    }
}
