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

fn main() {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    if let Err(e) = runtime.block_on(cli::run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
