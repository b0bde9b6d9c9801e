//! `svcplane ipam`: apply pools, show them, and benchmark concurrent allocation against etcd.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use ipam::allocator::{PoolStatus, PoolsView};
use ipam::bench::{self, BenchConfig};
use ipam::spec::{self, PoolSpec};
use ipam::store::Store;
use ipam::{AllocatorOptions, PoolKind};
use serde::Serialize;

use crate::etcd_flags::{EtcdFlags, parse_duration};

#[derive(Debug, Subcommand)]
pub(crate) enum IpamCommand {
    /// Create or update pools from a pools file or from kube-apiserver-style range flags.
    ///
    /// A change that would leave an allocated or held value outside its pool is refused, naming
    /// the values; nothing is written unless every pool is valid.
    Apply(ApplyArgs),
    /// Show each pool: ranges, static and dynamic bands, size, used, held, reserved and free.
    Show(ShowArgs),
    /// Allocate values with concurrent allocators (each with its own etcd client), verify that
    /// none was handed out twice, report allocations per second, and release them.
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// Pools file (YAML; see docs/ipam.md).
    #[arg(short = 'f', long = "filename", value_name = "FILE", conflicts_with_all = ["cluster_ip_ranges", "node_port_range"])]
    file: Option<PathBuf>,
    /// ClusterIP CIDRs, at most one per family, primary first (repeat or separate with commas).
    #[arg(
        long = "service-cluster-ip-range",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    cluster_ip_ranges: Vec<String>,
    /// NodePort range, e.g. 30000-32767.
    #[arg(long = "service-node-port-range", value_name = "FIRST-LAST")]
    node_port_range: Option<String>,
    /// Hold of released values for pools made from the range flags (0 disables); a pools file
    /// sets `hold` per pool instead.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, conflicts_with = "file")]
    hold: Duration,
    #[command(flatten)]
    etcd: EtcdFlags,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    etcd: EtcdFlags,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Pool to allocate from: ipv4, ipv6 or nodeport.
    #[arg(long, value_name = "NAME")]
    pool: String,
    /// Concurrent allocators, each with its own etcd client and watch.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Values to allocate in total.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Leave the values allocated instead of releasing them.
    #[arg(long)]
    keep: bool,
    /// Tag of this run's owners (bench/<run-id>-w<N>); defaults to one derived from the process.
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// Write every allocated value and its owner to FILE, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// How long an allocation keeps retrying while etcd is unreachable.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    retry_timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    etcd: EtcdFlags,
}

pub(crate) async fn run(cmd: IpamCommand) -> anyhow::Result<()> {
    match cmd {
        IpamCommand::Apply(args) => apply(args).await,
        IpamCommand::Show(args) => show(args).await,
        IpamCommand::Bench(args) => run_bench(args).await,
    }
}

fn load_specs(args: &ApplyArgs) -> anyhow::Result<Vec<PoolSpec>> {
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the pools file {}", path.display()))?;
        return spec::parse_pools_file(&text)
            .with_context(|| format!("invalid pools file {}", path.display()));
    }
    if args.cluster_ip_ranges.is_empty() && args.node_port_range.is_none() {
        bail!(
            "nothing to apply: give a pools file (-f pools.yaml) or --service-cluster-ip-range and/or --service-node-port-range"
        );
    }
    Ok(spec::specs_from_flags(
        &args.cluster_ip_ranges,
        args.node_port_range.as_deref(),
        args.hold,
    )?)
}

async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let specs = load_specs(&args)?;
    let store = args.etcd.connect().await?;
    for (name, outcome) in ipam::apply::apply(&store, &specs).await? {
        println!("pool {name} {outcome}");
    }
    Ok(())
}

/// One pool as `show` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolRow {
    name: String,
    kind: String,
    ranges: Vec<String>,
    static_band: Vec<String>,
    dynamic_band: Vec<String>,
    size: u128,
    used: u128,
    held: u128,
    reserved: u128,
    free: u128,
    hold: String,
    reservations: std::collections::BTreeMap<String, Vec<String>>,
}

fn row(status: &PoolStatus) -> PoolRow {
    let pool = &status.pool;
    let band =
        |b: Option<(u128, u128)>| b.map(|(a, z)| format!("{}-{}", pool.value(a), pool.value(z)));
    PoolRow {
        name: pool.name.clone(),
        kind: match pool.kind {
            PoolKind::ClusterIp(f) => format!("ClusterIP/{f}"),
            PoolKind::NodePort => "NodePort".into(),
        },
        ranges: pool.spans.iter().map(|s| s.text.clone()).collect(),
        static_band: pool.spans.iter().filter_map(|s| band(s.lower())).collect(),
        dynamic_band: pool.spans.iter().filter_map(|s| band(s.upper())).collect(),
        size: status.counts.size,
        used: status.counts.used,
        held: status.counts.held,
        reserved: status.counts.reserved,
        free: status.counts.free,
        hold: humantime::format_duration(pool.hold).to_string(),
        reservations: status.spec.reservations.clone(),
    }
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let store = args.etcd.connect().await?;
    let snap = store.snapshot().await?;
    let rows: Vec<PoolRow> = PoolsView::from_snapshot(&snap)
        .pools()
        .iter()
        .map(row)
        .collect();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table if rows.is_empty() => {
            println!(
                "no pools under {} at {}; create them with `svcplane ipam apply`",
                args.etcd.prefix,
                store.describe()
            )
        }
        Output::Table => print!("{}", table(&rows)),
    }
    Ok(())
}

fn table(rows: &[PoolRow]) -> String {
    let head = [
        "POOL",
        "KIND",
        "RANGES",
        "STATIC BAND",
        "DYNAMIC BAND",
        "SIZE",
        "USED",
        "HELD",
        "RESERVED",
        "FREE",
        "HOLD",
    ];
    let none = || "-".to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.kind.clone(),
                r.ranges.join(","),
                if r.static_band.is_empty() {
                    none()
                } else {
                    r.static_band.join(",")
                },
                if r.dynamic_band.is_empty() {
                    none()
                } else {
                    r.dynamic_band.join(",")
                },
                r.size.to_string(),
                r.used.to_string(),
                r.held.to_string(),
                r.reserved.to_string(),
                r.free.to_string(),
                r.hold.clone(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: Vec<&str>| {
        let padded: Vec<String> = cols
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(head.to_vec());
    for c in &cells {
        out.push_str(&line(c.iter().map(String::as_str).collect()));
    }
    out
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let config = BenchConfig {
        pool: args.pool.clone(),
        workers: args.workers,
        count: args.count,
        keep: args.keep,
        run_id: args
            .run_id
            .clone()
            .unwrap_or_else(|| format!("p{}", std::process::id())),
    };
    let options = AllocatorOptions {
        retry_timeout: args.retry_timeout,
        ..AllocatorOptions::default()
    };
    // Fail fast with the connection error rather than inside a worker.
    args.etcd.connect().await?;
    let report = bench::run(&config, &options, || args.etcd.connect()).await?;
    if let Some(path) = &args.report {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write the report file {}", path.display()))?,
        );
        for (value, owner) in &report.values {
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({ "value": value.to_string(), "owner": owner }),
            )?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            println!(
                "pool {}: {} workers allocated {} of {} values in {:.3} s: {:.0} allocations/s",
                report.pool,
                report.workers,
                report.allocated,
                report.requested,
                report.seconds,
                report.allocations_per_second
            );
            println!("duplicates: {}", report.duplicates);
            println!(
                "store agrees with the workers: {}",
                if report.mismatches.is_empty() {
                    "yes"
                } else {
                    "NO"
                }
            );
            if report.full {
                println!("the pool became full before every value was allocated");
            }
            println!("released: {}", report.released);
        }
    }
    if report.duplicates > 0 || !report.mismatches.is_empty() {
        for m in report.mismatches.iter().take(20) {
            eprintln!("mismatch: {m}");
        }
        bail!(
            "{} duplicates and {} mismatches between the workers and etcd",
            report.duplicates,
            report.mismatches.len()
        );
    }
    Ok(())
}
