//! The command line: every subcommand and flag of `svcplane`, and the dispatch to the modules
//! that carry them out.

use clap::{Parser, Subcommand};

use crate::apiserver_cmd::ApiserverArgs;
use crate::controller_cmd::ControllerArgs;
use crate::dev_cmd::DevArgs;
use crate::dns_cmd::DnsArgs;
use crate::ipam_cmd::IpamCommand;

/// The Service machinery of Kubernetes, in one binary: ClusterIP and NodePort pools in etcd that
/// any number of allocators share (`svcplane ipam`), cluster DNS (`svcplane dns`), a
/// Kubernetes-compatible API server (`svcplane apiserver`), and all of it on one machine
/// (`svcplane dev`).
#[derive(Debug, Parser)]
#[command(name = "svcplane", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage and inspect the ClusterIP and NodePort pools in etcd.
    #[command(subcommand)]
    Ipam(Box<IpamCommand>),
    /// Serve cluster DNS (a drop-in for kube-dns / CoreDNS's kubernetes plugin) from manifests
    /// or the Kubernetes API.
    Dns(Box<DnsArgs>),
    /// Keep Endpoints and EndpointSlices of Services in step with their pods: beside
    /// kube-controller-manager for Services with the set-based `svcplane.io/selector`
    /// annotation, or in place of its endpoint controllers (`--manage=all`); with a serving
    /// certificate, also allocate ClusterIPs and NodePorts as kube-apiserver's mutating
    /// admission webhook, from pools in etcd.
    Controller(Box<ControllerArgs>),
    /// Serve a Kubernetes-compatible API (namespaces, services, endpoints, pods, nodes,
    /// events, endpointslices, leases) from memory or etcd, for kubectl and kube-rs clients.
    Apiserver(Box<ApiserverArgs>),
    /// Run the whole system on this machine: the API server with a simulated kubelet, Service
    /// allocation at admission, and cluster DNS; writes ./.svcplane/kubeconfig for kubectl.
    Dev(Box<DevArgs>),
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ipam(cmd) => crate::ipam_cmd::run(*cmd).await,
        Command::Dns(args) => crate::dns_cmd::run(*args).await,
        Command::Controller(args) => crate::controller_cmd::run(*args).await,
        Command::Apiserver(args) => crate::apiserver_cmd::run(*args).await,
        Command::Dev(args) => crate::dev_cmd::run(*args).await,
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Aborts a task when dropped: what a command spawned beside its main work stops with it.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
