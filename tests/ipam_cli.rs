//! `svcplane ipam` from the shell, against a real etcd: apply, show (table and JSON), bench in
//! one process and in several processes at once, and the errors bad input gets.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};

use ipam::store::Store;
use ipam::store::etcd::{EtcdConfig, EtcdStore};

fn svcplane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_svcplane"))
        .args(args)
        .output()
        .expect("run svcplane")
}

/// Runs `svcplane` with etcd flags for `prefix`, expecting success; returns stdout.
fn ok(prefix: &str, args: &[&str]) -> String {
    let etcd = testkit::Etcd::shared().endpoint();
    let mut all = args.to_vec();
    all.extend(["--etcd-endpoints", &etcd, "--etcd-prefix", prefix]);
    let out = svcplane(&all);
    assert!(
        out.status.success(),
        "svcplane {all:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `svcplane`, expecting failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = svcplane(args);
    assert!(!out.status.success(), "svcplane {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const POOLS: &str = "clusterIP:
  ipv4:
    cidrs: [10.96.0.0/20]
    hold: 1m
    reservations:
      kube-system/kube-dns: 10.96.0.10
  ipv6:
    cidrs: ['fd00:10:96::/64']
nodePort:
  range: 30000-32767
";

#[test]
fn apply_show_and_bench_work_from_the_shell() {
    let prefix = testkit::unique_prefix("cli");
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "pools.yaml", POOLS);
    let out = ok(&prefix, &["ipam", "apply", "-f", &file]);
    assert_eq!(
        out,
        "pool ipv4 created\npool ipv6 created\npool nodeport created\n"
    );
    assert_eq!(
        ok(&prefix, &["ipam", "apply", "-f", &file]),
        "pool ipv4 unchanged\npool ipv6 unchanged\npool nodeport unchanged\n"
    );

    let table = ok(&prefix, &["ipam", "show"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("POOL")
            && lines[0].contains("STATIC BAND")
            && lines[0].contains("FREE"),
        "{table}"
    );
    let ipv4: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        ipv4,
        [
            "ipv4",
            "ClusterIP/IPv4",
            "10.96.0.0/20",
            "10.96.0.1-10.96.1.0",
            "10.96.1.1-10.96.15.254",
            "4094",
            "0",
            "0",
            "1",
            "4093",
            "1m"
        ]
    );
    assert!(
        lines[3].starts_with("nodeport")
            && lines[3].contains("30000-30085")
            && lines[3].contains("30086-32767"),
        "{table}"
    );

    let report: serde_json::Value = serde_json::from_str(&ok(
        &prefix,
        &[
            "ipam",
            "bench",
            "--pool",
            "ipv4",
            "--workers",
            "4",
            "--count",
            "2000",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(report["allocated"], 2000);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["mismatches"], serde_json::json!([]));
    assert_eq!(report["released"], 2000);
    assert!(report["allocationsPerSecond"].as_f64().unwrap() > 0.0);

    let pools: serde_json::Value =
        serde_json::from_str(&ok(&prefix, &["ipam", "show", "-o", "json"])).unwrap();
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ipv4", "ipv6", "nodeport"]);
    assert_eq!(pools[0]["used"], 0, "bench released what it took");
    assert_eq!(
        pools[1]["size"],
        serde_json::json!(u64::MAX),
        "an IPv6 /64 has 2^64 - 1 usable addresses"
    );
    assert_eq!(pools[2]["staticBand"], serde_json::json!(["30000-30085"]));
}

#[test]
fn four_bench_processes_allocate_concurrently_without_duplicates_and_a_later_process_sees_them_all()
{
    let prefix = testkit::unique_prefix("procs");
    ok(
        &prefix,
        &[
            "ipam",
            "apply",
            "--service-cluster-ip-range",
            "10.96.0.0/20",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let etcd = testkit::Etcd::shared().endpoint();
    let children: Vec<_> = (0..4)
        .map(|i| {
            let report = dir.path().join(format!("p{i}.jsonl"));
            let child = Command::new(env!("CARGO_BIN_EXE_svcplane"))
                .args([
                    "ipam",
                    "bench",
                    "--pool",
                    "ipv4",
                    "--workers",
                    "1",
                    "--count",
                    "1000",
                    "--keep",
                ])
                .args(["--run-id", &format!("proc{i}"), "--report"])
                .arg(&report)
                .args(["--etcd-endpoints", &etcd, "--etcd-prefix", &prefix])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (child, report)
        })
        .collect();
    let mut reported = BTreeMap::new();
    for (mut child, report) in children {
        assert!(child.wait().unwrap().success());
        for line in std::fs::read_to_string(report).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let value = v["value"].as_str().unwrap().to_string();
            let owner: ipam::Owner = serde_json::from_value(v["owner"].clone()).unwrap();
            assert!(
                reported.insert(value.clone(), owner).is_none(),
                "{value} was handed out twice"
            );
        }
    }
    assert_eq!(reported.len(), 4000);
    // etcd holds exactly these values, owner by owner.
    let stored = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = EtcdStore::connect(&EtcdConfig::new(vec![etcd.clone()], prefix.clone()))
            .await
            .unwrap();
        store.snapshot().await.unwrap().values
    });
    let stored: BTreeMap<String, ipam::Owner> = stored
        .into_iter()
        .map(|v| (v.value, v.record.owner))
        .collect();
    assert_eq!(stored, reported);
    let objects: BTreeSet<&str> = stored.values().map(|o| o.object.as_str()).collect();
    assert_eq!(
        objects.len(),
        4,
        "each process allocated under its own owner"
    );
    // A process started afterwards sees every allocation.
    let pools: serde_json::Value =
        serde_json::from_str(&ok(&prefix, &["ipam", "show", "-o", "json"])).unwrap();
    assert_eq!(pools[0]["used"], 4000);
    assert_eq!(pools[0]["free"], 94);
    // Shrinking below the used values is refused, naming them.
    let err = fails(&[
        "ipam",
        "apply",
        "--service-cluster-ip-range",
        "10.96.0.0/24",
        "--etcd-endpoints",
        &etcd,
        "--etcd-prefix",
        &prefix,
    ]);
    assert!(
        err.contains("pool ipv4: the new spec leaves values in use outside the pool")
            && err.contains("(bench/proc"),
        "{err}"
    );
}

#[test]
fn bad_input_exits_non_zero_naming_the_input_and_the_fix() {
    let etcd = testkit::Etcd::shared().endpoint();
    let prefix = testkit::unique_prefix("bad");
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = write(
        &dir,
        "bad.yaml",
        "clusterIP:\n  ipv4:\n    cidrs: [10.96.0.0/12]\n    reservation: {}\n",
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let closed_url = format!("http://127.0.0.1:{closed}");
    let e = [
        "--etcd-endpoints",
        etcd.as_str(),
        "--etcd-prefix",
        prefix.as_str(),
    ];
    // (arguments, what the error must say)
    let rows: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec![
                "ipam",
                "apply",
                "--service-cluster-ip-range",
                "10.96.0.0/33",
            ],
            &[
                "--service-cluster-ip-range[0]",
                "\"10.96.0.0/33\" is not a CIDR",
            ],
        ),
        (
            vec![
                "ipam",
                "apply",
                "--service-cluster-ip-range",
                "10.96.0.5/12",
            ],
            &["has host bits set; did you mean 10.96.0.0/12?"],
        ),
        (
            vec!["ipam", "apply", "--service-node-port-range", "32767-30000"],
            &["--service-node-port-range", "write 30000-32767"],
        ),
        (
            vec!["ipam", "apply", "-f", &bad_yaml],
            &["bad.yaml", "unknown field `reservation`", "expected one of"],
        ),
        (
            vec!["ipam", "apply", "-f", "/nonexistent/pools.yaml"],
            &["cannot read the pools file /nonexistent/pools.yaml"],
        ),
        (vec!["ipam", "apply"], &["nothing to apply"]),
        (
            vec!["ipam", "bench", "--pool", "ipv9"],
            &["unknown pool \"ipv9\"", "svcplane ipam apply"],
        ),
        (
            vec!["ipam", "show", "--etcd-certfile", "/tmp/cert.pem"],
            &["--etcd-certfile needs --etcd-keyfile"],
        ),
    ];
    for (args, wants) in rows {
        let mut all = args.clone();
        all.extend(e);
        let err = fails(&all);
        for want in wants {
            assert!(
                err.contains(want),
                "svcplane {args:?}: expected {want:?} in:\n{err}"
            );
        }
    }
    let err = fails(&[
        "ipam",
        "show",
        "--etcd-endpoints",
        &etcd,
        "--etcd-prefix",
        "svcplane",
    ]);
    assert!(
        err.contains("--etcd-prefix") && err.contains("must start and end with '/'"),
        "{err}"
    );
    let err = fails(&[
        "ipam",
        "show",
        "--etcd-endpoints",
        &closed_url,
        "--etcd-timeout",
        "1s",
    ]);
    assert!(
        err.contains(&format!("etcd at {closed_url} is unreachable"))
            && err.contains("check --etcd-endpoints"),
        "{err}"
    );
}
