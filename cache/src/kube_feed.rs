//! The Kubernetes API feed: one kube-runtime watcher per kind, each list applied as one
//! [`Event::Reset`] step (so a relist never shows a half-filled cache) and each watch event as
//! its own step.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client, Config};

use crate::follow::Source;
use crate::store::{Cache, Event, Kind, Object};
use crate::types::Key;
use crate::{Error, Result, api, convert};

/// A client from `--kubeconfig`, else `KUBECONFIG` / `~/.kube/config`, else the in-cluster
/// service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = config(kubeconfig, None).await?;
    Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
}

/// [`client`], with `context` of the kubeconfig instead of its current one, each request
/// reported to `observer` with the API server's `host:port`.
pub async fn observed_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    observer: impl Fn(&str) -> std::sync::Arc<dyn crate::rest::RestObserver>,
) -> Result<Client> {
    let config = config(kubeconfig, context).await?;
    let host = config
        .cluster_url
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let layer = crate::rest::ObserveLayer(observer(&host));
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(|e| Error::Client(e.to_string()))?
        .with_layer(&layer)
        .build())
}

/// The client configuration of [`client`].
async fn config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Config> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                Error::Client(format!("cannot read --kubeconfig {}: {e}", path.display()))
            })?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| Error::Client(format!("--kubeconfig {}: {e}", path.display())))?
        }
        None if context.is_some() => Config::from_kubeconfig(&options).await.map_err(|e| {
            Error::Client(format!(
                "no kubeconfig with context {} ({e}); set KUBECONFIG",
                context.unwrap_or_default()
            ))
        })?,
        None => Config::infer().await.map_err(|e| {
            Error::Client(format!(
                "no kubeconfig found ({e}); pass --kubeconfig or set KUBECONFIG"
            ))
        })?,
    };
    Ok(config)
}

/// The kinds a DNS server watches: Namespaces and Services always, EndpointSlices unless
/// `noendpoints`, Pods only for `pods verified`.
pub fn kinds(endpoints: bool, pods: bool) -> Vec<Kind> {
    let mut kinds = vec![Kind::Namespaces, Kind::Services];
    if endpoints {
        kinds.push(Kind::EndpointSlices);
    }
    if pods {
        kinds.push(Kind::Pods);
    }
    kinds
}

/// Shares of watches another reader in the process runs too (see
/// [`crate::follow::SharedWatch`]); a kind without one gets its own watcher, of the objects
/// the selectors match.
#[derive(Default)]
pub struct Shared {
    pub services: Option<Source<api::Service>>,
    pub endpoint_slices: Option<Source<api::EndpointSlice>>,
    /// Only Services and EndpointSlices with these labels (CoreDNS's `labels`).
    pub labels: Option<String>,
    /// Only Namespaces with these labels (CoreDNS's `namespace_labels`).
    pub namespace_labels: Option<String>,
}

/// A watcher of `api`, of what `selector` matches if given.
fn own<K>(api: Api<K>, selector: &Option<String>) -> Source<K> {
    match selector {
        Some(selector) => Source::Selected(Box::new(api), selector.clone()),
        None => Source::Api(Box::new(api)),
    }
}

/// Starts a watcher for each of `kinds`, feeding `cache` (from `shared` where given).
pub fn spawn(
    cache: Arc<Cache>,
    client: Client,
    kinds: &[Kind],
    mut shared: Shared,
) -> Vec<tokio::task::JoinHandle<()>> {
    kinds
        .iter()
        .map(|kind| {
            let (cache, client) = (cache.clone(), client.clone());
            match kind {
                Kind::Namespaces => tokio::spawn(watch(
                    cache,
                    own(Api::<api::Namespace>::all(client), &shared.namespace_labels),
                    *kind,
                    |ns| convert::namespace(ns).map(Object::Namespace),
                )),
                Kind::Services => {
                    let source = shared
                        .services
                        .take()
                        .unwrap_or_else(|| own(Api::all(client), &shared.labels));
                    tokio::spawn(watch(cache, source, *kind, |s| {
                        convert::service(s).map(Object::Service)
                    }))
                }
                Kind::EndpointSlices => tokio::spawn(watch(
                    cache,
                    shared
                        .endpoint_slices
                        .take()
                        .unwrap_or_else(|| own(Api::all(client), &shared.labels)),
                    *kind,
                    |s| convert::endpoint_slice(s).map(Object::EndpointSlice),
                )),
                Kind::Pods => tokio::spawn(watch(
                    cache,
                    Source::Api(Box::new(Api::<api::Pod>::all(client))),
                    *kind,
                    |p| convert::pod(p).map(Object::Pod),
                )),
            }
        })
        .collect()
}

fn key_of<K: kube::Resource>(obj: &K) -> Key {
    let meta = obj.meta();
    // Namespaces are keyed by name alone.
    Key::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The resource a kind is watched as, as RBAC names it.
fn resource(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespaces => "namespaces",
        Kind::Services => "services",
        Kind::EndpointSlices => "endpointslices (discovery.k8s.io)",
        Kind::Pods => "pods",
    }
}

/// Whether a watcher failed because the API server refused this identity (HTTP 403).
fn forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 403,
        watcher::Error::WatchError(status) => status.code == 403,
        _ => false,
    }
}

/// Runs one watcher until the process ends.
async fn watch<K, F>(cache: Arc<Cache>, source: Source<K>, kind: Kind, convert: F)
where
    K: crate::follow::Watched,
    F: Fn(&K) -> Result<Object>,
{
    use tracing::Instrument;
    let span = tracing::info_span!("watch", kind = ?kind);
    async move {
        let convert_or_log = |obj: &K| match convert(obj) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an object the cache cannot use");
                None
            }
        };
        let mut listing: Vec<Object> = Vec::new();
        let mut stream = source.events();
        while let Some(item) = stream.next().await {
            match item {
                Ok(WatchEvent::Init) => listing.clear(),
                Ok(WatchEvent::InitApply(obj)) => listing.extend(convert_or_log(&obj)),
                Ok(WatchEvent::InitDone) => {
                    cache.apply([
                        Event::Reset(kind, std::mem::take(&mut listing)),
                        Event::Synced(kind),
                    ]);
                }
                // An object that no longer converts is dropped, as a relist would drop it.
                Ok(WatchEvent::Apply(obj)) => match convert_or_log(&obj) {
                    Some(o) => cache.apply([Event::Apply(o)]),
                    None => cache.apply([Event::Delete(kind, key_of(&obj))]),
                },
                Ok(WatchEvent::Delete(obj)) => cache.apply([Event::Delete(kind, key_of(&obj))]),
                Err(e) => match forbidden(&e) {
                    // Retried like any failure (the grant may come), but said plainly: the
                    // cache cannot sync, so cluster names stay SERVFAIL until it is granted.
                    true => tracing::error!(
                        error = %e,
                        "cannot list or watch {}: forbidden to this identity; grant it list and \
                         watch on {} (the cache stays unsynced until then); retrying",
                        resource(kind),
                        resource(kind),
                    ),
                    false => tracing::warn!(error = %e, "watch failed; retrying"),
                },
            }
        }
    }
    .instrument(span)
    .await
}
