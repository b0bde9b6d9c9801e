//! The etcd store: one key per allocated or held value, written only by transactions that compare
//! the key's revision (`create_revision == 0` to create it), holds bound to an etcd lease, pool
//! specs beside them, and a watch with `prev_kv` that reports compaction so readers relist.
//!
//! Key layout under the prefix (default `/svcplane/ipam/`):
//! - `pools/<pool>` → the pool spec (JSON)
//! - `values/<pool>/<value>` → the allocation record (JSON), e.g. `values/ipv4/10.96.0.10`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
pub use etcdconf::EtcdConfig;
use futures::StreamExt;

use super::{
    Cas, Change, PoolWrite, Read, Snapshot, Store, StoredValue, WatchItem, WatchStream, Write,
};
use crate::occupancy::{Expect, Record, Rev};
use crate::spec::PoolSpec;
use crate::{Error, Result};

/// A store in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    endpoints: String,
    /// The lease current holds are put under, per hold length in seconds: (lease, granted).
    hold_leases: Arc<Mutex<HashMap<i64, (i64, Instant)>>>,
}

/// How long one lease keeps being used for new holds of one length (each such hold then lasts
/// up to this much longer than asked): one lease per window, not one per hold, and a lost
/// compare-and-swap orphans no lease.
fn hold_lease_window(secs: i64) -> i64 {
    (secs / 10).max(1)
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Page size of snapshot reads.
const PAGE: i64 = 5_000;

impl EtcdStore {
    /// Connects and checks that etcd answers.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdStore> {
        let prefix = config.checked_prefix(super::DEFAULT_PREFIX)?.to_string();
        let (client, endpoints) = config.connect_client().await?;
        Ok(EtcdStore {
            client,
            prefix,
            endpoints,
            hold_leases: Arc::default(),
        })
    }

    /// A lease that ends no sooner than `secs` from now and at most a window later: the one
    /// granted for this hold length within the window, or a fresh one.
    async fn hold_lease(&self, secs: i64) -> Result<i64> {
        let window = hold_lease_window(secs);
        let now = Instant::now();
        {
            let leases = self.hold_leases.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((id, granted)) = leases.get(&secs)
                && now.duration_since(*granted) < Duration::from_secs(window as u64)
            {
                return Ok(*id);
            }
        }
        // Timed from before the grant: etcd's countdown starts later, so the lease lasts at
        // least `secs + window` from `now`.
        let lease = self
            .client
            .lease_client()
            .grant(secs + window, None)
            .await
            .map_err(|e| self.err(e))?;
        self.hold_leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(secs, (lease.id(), now));
        Ok(lease.id())
    }

    fn pool_key(&self, pool: &str) -> String {
        format!("{}pools/{pool}", self.prefix)
    }

    fn value_key(&self, pool: &str, value: &str) -> String {
        format!("{}values/{pool}/{value}", self.prefix)
    }

    fn err(&self, e: etcd_client::Error) -> Error {
        use etcd_client::Error as E;
        let transient = match &e {
            E::TransportError(_) | E::IoError(_) => true,
            E::GRpcStatus(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
            E::WatchError(_) => true,
            _ => false,
        };
        if transient {
            Error::Unavailable {
                endpoints: self.endpoints.clone(),
                message: e.to_string(),
            }
        } else {
            Error::Store(e.to_string())
        }
    }

    /// Decodes a key under the prefix into a change (`kv` present: put; absent: delete at `rev`).
    fn decode(&self, key: &[u8], value: Option<&[u8]>, rev: Rev) -> Result<Option<Change>> {
        let key = String::from_utf8_lossy(key);
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return Ok(None);
        };
        let corrupt = |message: String| Error::Corrupt {
            key: key.to_string(),
            message,
        };
        if let Some(name) = rest.strip_prefix("pools/") {
            let spec = value
                .map(|v| serde_json::from_slice::<PoolSpec>(v).map_err(|e| corrupt(e.to_string())))
                .transpose()?;
            return Ok(Some(Change::Pool {
                name: name.to_string(),
                spec,
                rev,
            }));
        }
        if let Some((pool, v)) = rest.strip_prefix("values/").and_then(|r| r.split_once('/')) {
            // An unreadable record still marks its value as taken, so it is never handed out;
            // `show` and repair name it.
            let record = value.map(|bytes| {
                serde_json::from_slice::<Record>(bytes).unwrap_or_else(|e| {
                    tracing::warn!(key = %key, error = %e, "unreadable allocation record; treating the value as taken");
                    Record::unreadable()
                })
            });
            return Ok(Some(Change::Value {
                pool: pool.to_string(),
                value: v.to_string(),
                record,
                rev,
            }));
        }
        Ok(None)
    }

    /// Reads one key, with the store revision of the read.
    async fn read(&self, key: String) -> Result<(Option<KeyValue>, Rev)> {
        let mut resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(|e| self.err(e))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.take_kvs().into_iter().next(), rev))
    }

    /// The record and revision of a value key as read (`None`: absent).
    fn value_of(&self, kv: Option<&KeyValue>) -> Result<Option<(Record, Rev)>> {
        match kv.map(|kv| self.decode_kv(kv)).transpose()?.flatten() {
            Some(Change::Value {
                record: Some(record),
                rev,
                ..
            }) => Ok(Some((record, rev))),
            _ => Ok(None),
        }
    }

    fn decode_kv(&self, kv: &KeyValue) -> Result<Option<Change>> {
        self.decode(kv.key(), Some(kv.value()), kv.mod_revision())
    }
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store for EtcdStore {
    async fn snapshot(&self) -> Result<Snapshot> {
        let mut kv = self.client.kv_client();
        let end = prefix_end(&self.prefix);
        let mut from = self.prefix.as_bytes().to_vec();
        let mut snap = Snapshot::default();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if snap.rev > 0 {
                opts = opts.with_revision(snap.rev);
            }
            let resp = kv
                .get(from.clone(), Some(opts))
                .await
                .map_err(|e| self.err(e))?;
            if snap.rev == 0 {
                snap.rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for item in resp.kvs() {
                match self.decode_kv(item) {
                    Ok(Some(Change::Pool {
                        spec: Some(spec),
                        rev,
                        ..
                    })) => snap.pools.push((spec, rev)),
                    Ok(Some(Change::Value {
                        pool,
                        value,
                        record: Some(record),
                        rev,
                    })) => snap.values.push(StoredValue {
                        pool,
                        value,
                        record,
                        rev,
                    }),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping undecodable key"),
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(snap),
            }
        }
    }

    async fn pool(&self, name: &str) -> Result<Option<(PoolSpec, Rev)>> {
        let (kv, _) = self.read(self.pool_key(name)).await?;
        match kv.map(|kv| self.decode_kv(&kv)).transpose()?.flatten() {
            Some(Change::Pool {
                spec: Some(spec),
                rev,
                ..
            }) => Ok(Some((spec, rev))),
            _ => Ok(None),
        }
    }

    async fn get(&self, pool: &str, value: &str) -> Result<Read> {
        let (kv, rev) = self.read(self.value_key(pool, value)).await?;
        Ok((self.value_of(kv.as_ref())?, rev))
    }

    async fn cas(
        &self,
        pool: &str,
        pool_rev: Option<Rev>,
        value: &str,
        expect: Expect,
        write: Write,
    ) -> Result<Cas> {
        let key = self.value_key(pool, value);
        let pool_key = self.pool_key(pool);
        let mut when = vec![match expect {
            Expect::Absent => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Expect::Rev(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, r),
        }];
        if let Some(r) = pool_rev {
            when.push(Compare::mod_revision(pool_key.clone(), CompareOp::Equal, r));
        }
        let op = match write {
            Write::Put { record, ttl } => {
                let json = serde_json::to_vec(&record).map_err(|e| Error::Store(e.to_string()))?;
                let opts = match ttl {
                    Some(ttl) => {
                        // etcd leases count whole seconds; round up so a hold is never shorter.
                        let secs = ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0);
                        let lease = self.hold_lease(secs.max(1)).await?;
                        Some(PutOptions::new().with_lease(lease))
                    }
                    None => None,
                };
                TxnOp::put(key.clone(), json, opts)
            }
            Write::Delete => TxnOp::delete(key.clone(), None),
        };
        let txn = Txn::new().when(when).and_then(vec![op]).or_else(vec![
            TxnOp::get(key.clone(), None),
            TxnOp::get(pool_key, None),
        ]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.err(e))?;
        if resp.succeeded() {
            return Ok(Cas::Done(resp.header().map(|h| h.revision()).unwrap_or(0)));
        }
        let gets: Vec<_> = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect();
        let pool_changed = pool_rev.is_some_and(|want| {
            gets.get(1)
                .and_then(|g| g.kvs().first())
                .map(|kv| kv.mod_revision())
                != Some(want)
        });
        let current = self.value_of(gets.first().and_then(|g| g.kvs().first()))?;
        Ok(Cas::Failed {
            current,
            pool_changed,
        })
    }

    async fn put_pools(&self, writes: &[PoolWrite], values_since: Rev) -> Result<bool> {
        let mut when = Vec::new();
        let mut ops = Vec::new();
        for w in writes {
            let key = self.pool_key(&w.spec.name);
            when.push(match w.expect {
                Expect::Absent => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Expect::Rev(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, r),
            });
            // No value of the pool may have been written since the caller checked them.
            let values = format!("{}values/{}/", self.prefix, w.spec.name);
            when.push(
                Compare::mod_revision(values.clone(), CompareOp::Less, values_since + 1)
                    .with_range(prefix_end(&values)),
            );
            let json = serde_json::to_vec(&w.spec).map_err(|e| Error::Store(e.to_string()))?;
            ops.push(TxnOp::put(key, json, None));
        }
        let resp = self
            .client
            .kv_client()
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(|e| self.err(e))?;
        Ok(resp.succeeded())
    }

    async fn watch(&self, from: Rev) -> Result<WatchStream> {
        let opts = WatchOptions::new()
            .with_range(prefix_end(&self.prefix))
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(from);
        let stream = self
            .client
            .watch_client()
            .watch(self.prefix.clone(), Some(opts))
            .await
            .map_err(|e| self.err(e))?;
        let this = self.clone();
        let items = futures::stream::unfold(Some(stream), move |state| {
            let this = this.clone();
            async move {
                let mut stream = state?;
                loop {
                    let resp = match stream.message().await {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return None,
                        Err(e) => return Some((Err(this.err(e)), None)),
                    };
                    if resp.compact_revision() > 0 {
                        return Some((Ok(WatchItem::Compacted), None));
                    }
                    if resp.canceled() {
                        let reason = resp.cancel_reason().to_string();
                        return Some((
                            Err(Error::Unavailable {
                                endpoints: this.endpoints.clone(),
                                message: format!("watch cancelled: {reason}"),
                            }),
                            None,
                        ));
                    }
                    if resp.created() && resp.events().is_empty() {
                        continue;
                    }
                    // A watcher catching up may carry a header revision ahead of its events, so
                    // progress is the last event's revision; an empty response is a progress
                    // notification, sent only once the watcher is in sync.
                    let last_event = resp
                        .events()
                        .iter()
                        .filter_map(|e| e.kv())
                        .map(|kv| kv.mod_revision())
                        .max();
                    let rev = last_event
                        .unwrap_or_else(|| resp.header().map(|h| h.revision()).unwrap_or(0));
                    let mut changes = Vec::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let decoded = match ev.event_type() {
                            EventType::Put => this.decode_kv(kv),
                            EventType::Delete => {
                                // prev_kv says whose value went (a release, or a hold's lease ending).
                                if let Some(Ok(Some(Change::Value {
                                    record: Some(prev),
                                    value,
                                    pool,
                                    ..
                                }))) = ev.prev_kv().map(|p| this.decode_kv(p))
                                {
                                    tracing::debug!(pool, value, owner = %prev.owner, "value freed");
                                }
                                this.decode(kv.key(), None, kv.mod_revision())
                            }
                        };
                        match decoded {
                            Ok(Some(c)) => changes.push(c),
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, "skipping undecodable key"),
                        }
                    }
                    return Some((Ok(WatchItem::Changes(changes, rev)), Some(stream)));
                }
            }
        });
        Ok(items.boxed())
    }

    fn describe(&self) -> String {
        format!("etcd {} (prefix {})", self.endpoints, self.prefix)
    }
}
