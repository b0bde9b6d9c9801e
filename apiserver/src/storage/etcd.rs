//! The etcd backend, mapped as kube-apiserver maps it: one key per object, the object's
//! resourceVersion is the key's mod revision, writes are transactions comparing the revision
//! read, watches carry the previous value, and a compacted revision is 410 Expired.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;

use super::{Cas, Change, Changes, Kv, Page, prefix_end};
use crate::error::ApiError;

/// Storage in etcd. Keys are the registry keys as given (the caller adds its prefix).
#[derive(Clone)]
pub struct EtcdStorage {
    client: Client,
}

fn unavailable(e: etcd_client::Error) -> ApiError {
    let text = e.to_string();
    if text.contains("compacted") {
        return ApiError::expired(format!(
            "The resourceVersion for the provided list is too old: {text}"
        ));
    }
    ApiError::unavailable(format!("etcd: {text}"))
}

fn kv(kv: &KeyValue) -> Kv {
    Kv {
        key: Arc::from(String::from_utf8_lossy(kv.key()).as_ref()),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision() as u64,
        mod_revision: kv.mod_revision() as u64,
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision() as u64)
}

impl EtcdStorage {
    /// Connects to the etcd `config` names and checks that it answers; the objects go under
    /// its (checked) prefix, which comes back with the storage.
    pub async fn connect(
        config: &etcdconf::EtcdConfig,
    ) -> Result<(EtcdStorage, String), etcdconf::Error> {
        let prefix = config.checked_prefix("/svcplane/registry/")?.to_string();
        let (client, _) = config.connect_client().await?;
        Ok((EtcdStorage::new(client), prefix))
    }

    pub fn new(client: Client) -> EtcdStorage {
        EtcdStorage { client }
    }

    /// Compacts etcd's history up to `revision` (the periodic compactor and tests).
    pub async fn compact(&self, revision: u64) -> Result<(), ApiError> {
        let mut client = self.client.clone();
        match client.compact(revision as i64, None).await {
            Ok(_) => Ok(()),
            // Already compacted at or past it.
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<(Option<Kv>, u64), ApiError> {
        let mut client = self.client.clone();
        let resp = client.get(key, None).await.map_err(unavailable)?;
        Ok((resp.kvs().first().map(kv), header_revision(resp.header())))
    }

    pub(super) async fn revision(&self) -> Result<u64, ApiError> {
        let mut client = self.client.clone();
        let resp = client
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(unavailable)?;
        Ok(header_revision(resp.header()))
    }

    pub(super) async fn range(
        &self,
        prefix: &str,
        start: &str,
        revision: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Page, ApiError> {
        let mut client = self.client.clone();
        let mut options = GetOptions::new().with_range(prefix_end(prefix));
        if let Some(r) = revision {
            options = options.with_revision(r as i64);
        }
        if let Some(l) = limit {
            options = options.with_limit(l as i64);
        }
        let from = if start.is_empty() { prefix } else { start };
        let resp = client.get(from, Some(options)).await.map_err(unavailable)?;
        Ok(Page {
            kvs: resp.kvs().iter().map(kv).collect(),
            revision: revision.unwrap_or_else(|| header_revision(resp.header())),
            more: resp.more(),
        })
    }

    async fn cas(&self, compare: Compare, then: TxnOp, key: &str) -> Result<Cas, ApiError> {
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when([compare])
            .and_then([then])
            .or_else([TxnOp::get(key, None)]);
        let resp = client.txn(txn).await.map_err(unavailable)?;
        if resp.succeeded() {
            return Ok(Cas::Done(header_revision(resp.header())));
        }
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(kv),
            _ => None,
        });
        Ok(Cas::Failed(current))
    }

    pub(super) async fn create(&self, key: &str, value: Bytes) -> Result<Cas, ApiError> {
        let compare = Compare::create_revision(key, CompareOp::Equal, 0);
        self.cas(compare, TxnOp::put(key, value.to_vec(), None), key)
            .await
    }

    pub(super) async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
    ) -> Result<Cas, ApiError> {
        let compare = Compare::mod_revision(key, CompareOp::Equal, expected as i64);
        self.cas(compare, TxnOp::put(key, value.to_vec(), None), key)
            .await
    }

    pub(super) async fn delete(&self, key: &str, expected: u64) -> Result<Cas, ApiError> {
        let compare = Compare::mod_revision(key, CompareOp::Equal, expected as i64);
        self.cas(compare, TxnOp::delete(key, None), key).await
    }

    pub(super) async fn watch(
        &self,
        prefix: &str,
        after: u64,
        progress: Duration,
    ) -> Result<Changes, ApiError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(after as i64 + 1)
            .with_prev_key();
        let stream = client
            .watch(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        let (sender, responses) = stream.split();
        let state = EtcdWatch {
            sender,
            responses,
            pending: Default::default(),
            after,
            ticker: tokio::time::interval_at(tokio::time::Instant::now() + progress, progress),
            done: false,
        };
        Ok(futures::stream::unfold(state, next_change).boxed())
    }
}

struct EtcdWatch {
    sender: etcd_client::WatchRequestSender,
    responses: etcd_client::WatchResponseStream,
    pending: std::collections::VecDeque<Change>,
    after: u64,
    ticker: tokio::time::Interval,
    done: bool,
}

async fn next_change(mut w: EtcdWatch) -> Option<(Result<Change, ApiError>, EtcdWatch)> {
    loop {
        if let Some(change) = w.pending.pop_front() {
            return Some((Ok(change), w));
        }
        if w.done {
            return None;
        }
        tokio::select! {
            message = w.responses.message() => {
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => {
                        w.done = true;
                        return Some((Err(ApiError::unavailable("etcd closed the watch")), w));
                    }
                    Err(e) => {
                        w.done = true;
                        return Some((Err(unavailable(e)), w));
                    }
                };
                if resp.compact_revision() > 0 {
                    w.done = true;
                    let e = ApiError::too_old(w.after, resp.compact_revision() as u64);
                    return Some((Err(e), w));
                }
                if resp.canceled() {
                    w.done = true;
                    let e = ApiError::unavailable(format!("etcd cancelled the watch: {}", resp.cancel_reason()));
                    return Some((Err(e), w));
                }
                if resp.events().is_empty() {
                    // A progress notification (or the creation answer). Its header revision
                    // is not trusted as a bookmark: etcd before 3.4.31 may send one out of
                    // order with the events (etcd-io/etcd#15220, #17507). The last delivered
                    // revision is always safe.
                    if !resp.created() {
                        return Some((Ok(Change::Progress { revision: w.after }), w));
                    }
                    continue;
                }
                for event in resp.events() {
                    let Some(current) = event.kv() else { continue };
                    let is_create = current.create_revision() == current.mod_revision();
                    let change = match (event.event_type(), event.prev_kv()) {
                        (EventType::Put, prev) if prev.is_some() || is_create => Change::Put {
                            kv: kv(current),
                            prev: prev.map(kv),
                        },
                        (EventType::Delete, Some(prev)) => Change::Delete {
                            prev: kv(prev),
                            revision: current.mod_revision() as u64,
                        },
                        // The previous value was compacted away: neither a delete nor a
                        // selector transition can be shown, so the client must relist.
                        _ => {
                            w.done = true;
                            w.pending.clear();
                            let e = ApiError::too_old(w.after, current.mod_revision() as u64);
                            return Some((Err(e), w));
                        }
                    };
                    w.after = change.revision();
                    w.pending.push_back(change);
                }
            }
            _ = w.ticker.tick() => {
                // etcd answers with a progress notification once the watch has caught up.
                if w.sender.request_progress().await.is_err() {
                    w.done = true;
                    return Some((Err(ApiError::unavailable("etcd watch stream closed")), w));
                }
            }
        }
    }
}
