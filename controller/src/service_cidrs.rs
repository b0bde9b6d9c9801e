//! The pools against the cluster's ServiceCIDR objects (networking.k8s.io/v1, KEP-1880): every
//! ClusterIP pool CIDR must lie within a Ready ServiceCIDR, or kube-apiserver would refuse the
//! values svcplane hands out (`the provided IP is not in the valid range`). Checked when the
//! webhook starts; a mismatch names both sides and the webhook does not serve.

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::{Error, Result};

/// The pool CIDRs (pool name, CIDR) that lie within none of `ready`.
pub fn outside<'a>(pools: &'a [(String, String)], ready: &[IpNet]) -> Vec<&'a (String, String)> {
    pools
        .iter()
        .filter(|(_, cidr)| {
            let Ok(net) = cidr.parse::<IpNet>() else {
                return true;
            };
            !ready.iter().any(|r| r.contains(&net))
        })
        .collect()
}

/// The CIDRs of the cluster's Ready ServiceCIDRs, by object name; `None` when the API has no
/// ServiceCIDRs (a cluster older than 1.33 without the feature).
pub async fn ready(client: &Client) -> Result<Option<Vec<(String, IpNet)>>> {
    let api = Api::<ServiceCIDR>::all(client.clone());
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for object in list.items {
        let is_ready = object
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !is_ready {
            continue;
        }
        let name = object.metadata.name.clone().unwrap_or_default();
        for cidr in object.spec.and_then(|s| s.cidrs).unwrap_or_default() {
            if let Ok(net) = cidr.parse::<IpNet>() {
                out.push((name.clone(), net));
            }
        }
    }
    Ok(Some(out))
}

/// Refuses pools that lie outside every Ready ServiceCIDR of the cluster, naming both.
pub async fn check(client: &Client, pools: &[(String, String)]) -> Result<()> {
    let Some(cluster) = ready(client).await? else {
        tracing::info!(
            "the cluster serves no ServiceCIDR objects; the pools are not compared with them"
        );
        return Ok(());
    };
    let nets: Vec<IpNet> = cluster.iter().map(|(_, n)| *n).collect();
    let bad = outside(pools, &nets);
    if bad.is_empty() {
        return Ok(());
    }
    let theirs = if cluster.is_empty() {
        "none is Ready".to_string()
    } else {
        cluster
            .iter()
            .map(|(name, net)| format!("{name}: {net}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ours = bad
        .iter()
        .map(|(pool, cidr)| format!("pool {pool} {cidr}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::Config {
        field: "--service-cluster-ip-range".into(),
        message: format!(
            "{ours} lies outside every Ready ServiceCIDR of the cluster ({theirs}); kube-apiserver would refuse those addresses: make the pools equal to (or lie within) kube-apiserver's --service-cluster-ip-range"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn pools_within_a_ready_service_cidr_pass_and_others_are_named() {
        let ready: Vec<IpNet> = vec![
            "10.96.0.0/24".parse().unwrap(),
            "fd00:10:96::/120".parse().unwrap(),
        ];
        let ok = pools(&[("ipv4", "10.96.0.0/25"), ("ipv6", "fd00:10:96::/120")]);
        assert!(outside(&ok, &ready).is_empty());
        let bad = pools(&[("ipv4", "10.96.0.0/16"), ("ipv6", "fd00:10:97::/120")]);
        assert_eq!(outside(&bad, &ready).len(), 2);
        assert_eq!(outside(&bad, &[]).len(), 2);
    }
}
