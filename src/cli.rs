//! The command line: every subcommand and flag of `svcplane`, and the dispatch to the modules
//! that carry them out.

use clap::{Parser, Subcommand};

use crate::dns_cmd::DnsArgs;
use crate::ipam_cmd::IpamCommand;

/// The Service machinery of Kubernetes, in one binary: ClusterIP and NodePort pools in etcd that
/// any number of allocators share (`svcplane ipam`), and cluster DNS (`svcplane dns`).
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
    Ipam(IpamCommand),
    /// Serve cluster DNS (a drop-in for kube-dns / CoreDNS's kubernetes plugin) from manifests
    /// or the Kubernetes API.
    Dns(DnsArgs),
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ipam(cmd) => crate::ipam_cmd::run(cmd).await,
        Command::Dns(args) => crate::dns_cmd::run(args).await,
    }
}
