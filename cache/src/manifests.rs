//! The manifests feed: Namespaces, Services, EndpointSlices, Endpoints and Pods from files (YAML,
//! multi-document, or JSON; `v1 List` accepted) and directories of them, loaded as one atomic
//! step and reloaded, again as one step, whenever a file changes.
//!
//! An Endpoints object of a Service that has no EndpointSlices is converted the way EndpointSlice
//! mirroring would. A Namespace referenced by an object but not listed is treated as existing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::store::{Cache, Event, Kind, Object};
use crate::types::{EndpointSlice, Key, Name, Pod, Service};
use crate::{Error, Result, api, convert};

/// Everything a set of manifests holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loaded {
    pub namespaces: BTreeSet<Name>,
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
}

impl Loaded {
    /// The events that replace the cache's content with this, as one step.
    pub fn into_events(self) -> Vec<Event> {
        let mut events = vec![
            Event::Reset(
                Kind::Namespaces,
                self.namespaces.into_iter().map(Object::Namespace).collect(),
            ),
            Event::Reset(
                Kind::Services,
                self.services.into_iter().map(Object::Service).collect(),
            ),
            Event::Reset(
                Kind::EndpointSlices,
                self.slices.into_iter().map(Object::EndpointSlice).collect(),
            ),
            Event::Reset(Kind::Pods, self.pods.into_iter().map(Object::Pod).collect()),
        ];
        events.extend(
            [
                Kind::Namespaces,
                Kind::Services,
                Kind::EndpointSlices,
                Kind::Pods,
            ]
            .map(Event::Synced),
        );
        events
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The files named by `paths`: files as given, directories' `.yaml`/`.yml`/`.json` files (not
/// recursive), in name order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let io = |e: std::io::Error| Error::Manifest {
            file: path.display().to_string(),
            message: e.to_string(),
        };
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_manifest(p) && !p.is_dir())
                .collect();
            entries.sort();
            out.extend(entries);
        } else {
            std::fs::metadata(path).map_err(io)?;
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Size, modification time and inode of a file.
pub type FileStamp = (u64, SystemTime, u64);

/// What identifies the current content of `paths` without reading it: names, sizes, times and
/// inodes (a file replaced by a rename is a new inode even within one clock tick).
pub fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<FileStamp>)> {
    let listed = files(paths).unwrap_or_else(|_| paths.to_vec());
    listed
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok().map(|m| {
                (
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    std::os::unix::fs::MetadataExt::ino(&m),
                )
            });
            (p, meta)
        })
        .collect()
}

/// Reads and converts every manifest under `paths`.
pub fn load(paths: &[PathBuf]) -> Result<Loaded> {
    let mut acc = Collector::default();
    for file in files(paths)? {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::Manifest {
            file: file.display().to_string(),
            message: e.to_string(),
        })?;
        acc.file(&file, &text)?;
    }
    Ok(acc.finish())
}

/// Converts the manifests of one file's `text` (`file` names it in errors; a `.json` file is
/// read as JSON, any other as YAML documents).
pub fn parse(file: &Path, text: &str) -> Result<Loaded> {
    let mut acc = Collector::default();
    acc.file(file, text)?;
    Ok(acc.finish())
}

/// Objects collected so far, with where each came from (to refuse duplicates).
#[derive(Default)]
struct Collector {
    loaded: Loaded,
    endpoints: Vec<api::Endpoints>,
    seen: BTreeMap<(String, Key), String>,
}

impl Collector {
    /// Reads one file, converting each document as soon as it is parsed (a file may hold
    /// hundreds of thousands of objects; their generic form is never all held at once).
    fn file(&mut self, file: &Path, text: &str) -> Result<()> {
        let name = file.display().to_string();
        if file.extension().and_then(|e| e.to_str()) == Some("json") {
            let doc = serde_json::from_str(text).map_err(|e| Error::Manifest {
                file: name.clone(),
                message: e.to_string(),
            })?;
            return self.document(&name, 0, doc);
        }
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc).map_err(|e| Error::Manifest {
                file: name.clone(),
                message: format!("document {}: {e}", i + 1),
            })?;
            self.document(&name, i, value)?;
        }
        Ok(())
    }

    fn document(&mut self, file: &str, i: usize, doc: Value) -> Result<()> {
        let place = format!("document {}", i + 1);
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            let items = doc
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                self.object(file, &format!("{place}, items[{j}]"), item)?;
            }
        } else if !doc.is_null() {
            self.object(file, &place, doc)?;
        }
        Ok(())
    }

    fn object(&mut self, file: &str, place: &str, mut doc: Value) -> Result<()> {
        let err = |message: String| Error::Manifest {
            file: file.to_string(),
            message,
        };
        let Some(kind) = doc.get("kind").and_then(Value::as_str).map(str::to_string) else {
            return Err(err(format!(
                "{place}: kind: is required (Namespace, Service, EndpointSlice, Endpoints or Pod)"
            )));
        };
        // Namespaced objects without a namespace go to `default`, as with kubectl.
        if kind != "Namespace"
            && let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.entry("namespace")
                .or_insert_with(|| Value::String("default".into()));
        }
        let label = {
            let meta = doc.get("metadata");
            let name = meta
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            match meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
            {
                Some(ns) => format!("{place} ({kind} {ns}/{name})"),
                None => format!("{place} ({kind} {name})"),
            }
        };
        let conv = |e: Error| err(format!("{label}: {}", strip_object(&e)));
        match kind.as_str() {
            "Namespace" => {
                let ns: api::Namespace = typed(doc).map_err(|m| err(format!("{label}: {m}")))?;
                let name = convert::namespace(&ns).map_err(conv)?;
                self.remember(file, "Namespace", Key::new("", &name), &label)?;
                self.loaded.namespaces.insert(name);
            }
            "Service" => {
                let svc = convert::service(&typed(doc).map_err(|m| err(format!("{label}: {m}")))?)
                    .map_err(conv)?;
                self.remember(file, "Service", svc.key.clone(), &label)?;
                self.loaded.namespaces.insert(svc.key.namespace.clone());
                self.loaded.services.push(svc);
            }
            "EndpointSlice" => {
                let slice =
                    convert::endpoint_slice(&typed(doc).map_err(|m| err(format!("{label}: {m}")))?)
                        .map_err(conv)?;
                self.remember(file, "EndpointSlice", slice.key.clone(), &label)?;
                self.loaded.namespaces.insert(slice.key.namespace.clone());
                self.loaded.slices.push(slice);
            }
            "Endpoints" => {
                let eps: api::Endpoints = typed(doc).map_err(|m| err(format!("{label}: {m}")))?;
                let key = convert::key_of("Endpoints", &eps.metadata).map_err(conv)?;
                convert::mirror_endpoints(&eps).map_err(conv)?;
                self.remember(file, "Endpoints", key.clone(), &label)?;
                self.loaded.namespaces.insert(key.namespace);
                self.endpoints.push(eps);
            }
            "Pod" => {
                let pod = convert::pod(&typed(doc).map_err(|m| err(format!("{label}: {m}")))?)
                    .map_err(conv)?;
                self.remember(file, "Pod", pod.key.clone(), &label)?;
                self.loaded.namespaces.insert(pod.key.namespace.clone());
                self.loaded.pods.push(pod);
            }
            other => {
                tracing::warn!(file, object = %label, kind = other, "skipping a kind the DNS does not read")
            }
        }
        Ok(())
    }

    fn remember(&mut self, file: &str, kind: &str, key: Key, label: &str) -> Result<()> {
        if let Some(first) = self
            .seen
            .insert((kind.to_string(), key), format!("{file}, {label}"))
        {
            return Err(Error::Manifest {
                file: file.to_string(),
                message: format!("{label}: defined twice (first in {first}); keep one"),
            });
        }
        Ok(())
    }

    fn finish(mut self) -> Loaded {
        let with_slices: BTreeSet<Key> = self
            .loaded
            .slices
            .iter()
            .filter_map(|s| {
                s.service
                    .as_ref()
                    .map(|svc| Key::new(&s.key.namespace, svc))
            })
            .collect();
        let services: BTreeSet<Key> = self.loaded.services.iter().map(|s| s.key.clone()).collect();
        for eps in &self.endpoints {
            let Ok(key) = convert::key_of("Endpoints", &eps.metadata) else {
                continue;
            };
            if services.contains(&key) && !with_slices.contains(&key) {
                // Checked when collected, so it converts.
                self.loaded
                    .slices
                    .extend(convert::mirror_endpoints(eps).unwrap_or_default());
            }
        }
        self.loaded
    }
}

/// The message of a conversion error without its object prefix (the caller names the object).
fn strip_object(e: &Error) -> String {
    match e {
        Error::Invalid { field, message, .. } => format!("{field}: {message}"),
        other => other.to_string(),
    }
}

/// Deserialises a document into an API type, naming the field that failed.
fn typed<T: DeserializeOwned>(doc: Value) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Loads `paths` into `cache`, then reloads whenever they change (checked every `interval`).
/// Returns the error of the first load; later errors keep the previous content and are logged.
pub async fn run(cache: Arc<Cache>, paths: Vec<PathBuf>, interval: Duration) -> Result<()> {
    let first = paths.clone();
    // The stamp is taken before reading, so a change made during the first load is seen later.
    let (loaded, mut print) = tokio::task::spawn_blocking(move || {
        let print = fingerprint(&first);
        load(&first).map(|l| (l, print))
    })
    .await
    .map_err(|e| Error::Manifest {
        file: "(manifests)".into(),
        message: e.to_string(),
    })??;
    cache.apply(loaded.into_events());
    loop {
        tokio::time::sleep(interval).await;
        let p = paths.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&p)).await else {
            continue;
        };
        if now == print {
            continue;
        }
        let p = paths.clone();
        match tokio::task::spawn_blocking(move || load(&p)).await {
            Ok(Ok(loaded)) => {
                tracing::info!("manifests changed; reloaded");
                cache.apply(loaded.into_events());
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "manifests changed but do not load; keeping the previous content")
            }
            Err(e) => tracing::error!(error = %e, "manifest reload failed"),
        }
        print = now;
    }
}
