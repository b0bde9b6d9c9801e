//! The `svcplane` binary: parses the command line, sets up logging and runs the command.

mod apiserver_cmd;
mod cli;
mod controller_cmd;
mod dev_cmd;
mod dev_webhook;
mod dns_cmd;
mod etcd_flags;
mod ipam_cmd;
mod kubelet_flags;
mod local_admission;
mod pool_flags;

use clap::Parser;

/// jemalloc rather than glibc's malloc: the cluster objects a server keeps and the short-lived
/// ones of a load or relist, allocated on different threads, leave glibc's per-thread arenas
/// full of holes no later allocation fills (`svcplane dns` at 100 000 Services held 58 MiB
/// free inside its arenas after loading; docs/benchmarks.md has the RSS of both).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // Pages freed return to the system within seconds, whether or not the process is busy.
    let purging = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Err(e) = purging {
        tracing::warn!("jemalloc's background purging is off: {e}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    if let Err(e) = runtime.block_on(cli::run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
