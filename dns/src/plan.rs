//! What a Corefile asks of `svcplane dns`: its server blocks read into listeners (a port, the
//! zones routed there) and each block's plugins with their options, the process-wide HTTP
//! endpoints (`health`, `ready`, `prometheus`) and `reload`. Everything svcplane cannot run is
//! refused here with the file and line, never ignored.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::rr::Name;

use crate::cache;
use crate::config::PodsMode;
use crate::corefile::{Corefile, Directive, Loc, ServerBlock};
use crate::error::Error;
use crate::forward::{Forward, MAX_UPSTREAMS, Policy};

/// Everything a Corefile asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub blocks: Vec<Block>,
    /// The one `kubernetes` directive (svcplane answers one cluster per process).
    pub kubernetes: Option<Kubernetes>,
    /// `health [ADDR] { lameduck D }`: liveness on `/health`, and how long DNS keeps answering
    /// after a SIGTERM.
    pub health: Option<Health>,
    /// `ready [ADDR]`: readiness on `/ready`.
    pub ready: Option<SocketAddr>,
    /// `prometheus [ADDR]`: where `/metrics` is served.
    pub prometheus: Option<SocketAddr>,
    /// `reload [INTERVAL [JITTER]]`.
    pub reload: Option<Reload>,
}

impl Plan {
    /// What `svcplane dns`'s flags stand for: one block answering the cluster `zones`, and
    /// every other name too when there is a `forward` to send it to (without one, other names
    /// are outside the server and refused).
    pub fn of_flags(zones: &[Name], forward: Option<Forward>) -> Plan {
        let zones = if forward.is_some() {
            vec![Name::root()]
        } else {
            zones.to_vec()
        };
        let mut plan = Plan::default();
        plan.blocks.push(Block {
            kubernetes: true,
            forward,
            ..Block::new(
                zones,
                0,
                Loc {
                    file: "flags".into(),
                    line: 0,
                },
            )
        });
        plan
    }
}

/// What the command line changes of a Corefile, for tests and for running beside another DNS
/// server: the port of every block, the address of every listener, the HTTP ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub dns_port: Option<u16>,
    pub bind: Option<IpAddr>,
    pub health_port: Option<u16>,
    pub ready_port: Option<u16>,
    pub metrics_port: Option<u16>,
}

impl Plan {
    /// The plan with `overrides` applied to its HTTP endpoints, and the addresses each block
    /// listens on: `--bind` in place of every block's `bind`, neither meaning every address.
    pub fn with_overrides(mut self, o: Overrides) -> (Plan, Vec<Vec<SocketAddr>>) {
        let listen = self
            .blocks
            .iter()
            .map(|b| {
                let port = o.dns_port.unwrap_or(b.port);
                let ips = match (o.bind, b.bind.as_slice()) {
                    (Some(ip), _) => vec![ip],
                    (None, []) => vec![IpAddr::from([0, 0, 0, 0])],
                    (None, ips) => ips.to_vec(),
                };
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()
            })
            .collect();
        let moved = |addr: SocketAddr, port: Option<u16>| {
            SocketAddr::new(o.bind.unwrap_or(addr.ip()), port.unwrap_or(addr.port()))
        };
        self.health = self.health.map(|h| Health {
            addr: moved(h.addr, o.health_port),
            lameduck: h.lameduck,
        });
        self.ready = self.ready.map(|addr| moved(addr, o.ready_port));
        self.prometheus = self.prometheus.map(|addr| moved(addr, o.metrics_port));
        (self, listen)
    }
}

impl Kubernetes {
    /// The answering options this directive stands for, the server being reached at `own`
    /// (for its NS records); `fallthrough` without zones stands for every zone of the directive.
    pub fn config(&self, own: Vec<IpAddr>) -> crate::Result<crate::config::Config> {
        let fallthrough = match &self.fallthrough {
            None => Vec::new(),
            Some(zones) if zones.is_empty() => self.zones.clone(),
            Some(zones) => zones.clone(),
        };
        let config = crate::config::Config {
            zones: self.zones.clone(),
            ttl: self.ttl.unwrap_or(5),
            pods: self.pods.unwrap_or_default(),
            endpoint_pod_names: self.endpoint_pod_names,
            ignore_empty_service: self.ignore_empty_service,
            noendpoints: self.noendpoints,
            namespaces: (!self.namespaces.is_empty())
                .then(|| self.namespaces.iter().cloned().collect()),
            fallthrough,
            ns_addresses: own,
        };
        config.validate()?;
        Ok(config)
    }
}

/// One server block: where it listens and its plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The zones of its keys, in order.
    pub zones: Vec<Name>,
    pub port: u16,
    /// Where the block is written, for messages.
    pub at: Loc,
    /// Whether the block holds the `kubernetes` directive.
    pub kubernetes: bool,
    pub cache: Option<cache::Settings>,
    /// `hosts`: names from a hosts file and inline entries.
    pub hosts: Option<crate::hosts::Settings>,
    /// `forward FROM TO...`: where names the cluster zones do not answer go.
    pub forward: Option<Forward>,
    /// `log`: the rules of the lines written to stdout per query.
    pub log: Vec<crate::log::Rule>,
    /// `errors`: a line per failed query on stdout, some folded by `consolidate`.
    pub errors: Option<std::sync::Arc<crate::errors::ErrorLog>>,
    /// `loadbalance`: address and MX records shuffled.
    pub loadbalance: bool,
    /// `loop`: a forwarding loop ends the process at start.
    pub loop_detect: bool,
    /// `prometheus`: this block's queries are counted.
    pub prometheus: bool,
    /// `bind ADDR...`: the addresses the block listens on (none: every address).
    pub bind: Vec<IpAddr>,
    /// `bufsize N`: an EDNS buffer size above N is taken as N.
    pub bufsize: Option<u16>,
    /// `rewrite name` rules, in order.
    pub rewrite: Vec<crate::rewrite::NameRule>,
}

impl Block {
    /// A block of `zones` on `port` (written `at`) without plugins.
    pub fn new(zones: Vec<Name>, port: u16, at: Loc) -> Block {
        Block {
            zones,
            port,
            at,
            kubernetes: false,
            cache: None,
            hosts: None,
            forward: None,
            log: Vec::new(),
            errors: None,
            loadbalance: false,
            loop_detect: false,
            prometheus: false,
            bind: Vec::new(),
            bufsize: None,
            rewrite: Vec::new(),
        }
    }

    /// The plugin CoreDNS credits the block's replies to in `coredns_dns_responses_total`: the
    /// first handler after `prometheus` in CoreDNS's fixed order.
    pub fn first_plugin(&self) -> &'static str {
        [
            (self.errors.is_some(), "errors"),
            (!self.log.is_empty(), "log"),
            (self.loadbalance, "loadbalance"),
            (!self.rewrite.is_empty(), "rewrite"),
            (self.cache.is_some(), "cache"),
            (self.hosts.is_some(), "hosts"),
            (self.kubernetes, "kubernetes"),
            (self.loop_detect, "loop"),
            (self.forward.is_some(), "forward"),
        ]
        .into_iter()
        .find_map(|(present, name)| present.then_some(name))
        .unwrap_or("")
    }

    /// The plugins of the block, as `coredns_plugin_enabled` lists them.
    pub fn plugins(&self, plan: &Plan) -> Vec<&'static str> {
        [
            (plan.reload.is_some(), "reload"),
            (plan.ready.is_some(), "ready"),
            (plan.health.is_some(), "health"),
            (self.bufsize.is_some(), "bufsize"),
            (self.prometheus, "prometheus"),
            (self.errors.is_some(), "errors"),
            (!self.log.is_empty(), "log"),
            (self.loadbalance, "loadbalance"),
            (!self.rewrite.is_empty(), "rewrite"),
            (self.cache.is_some(), "cache"),
            (self.hosts.is_some(), "hosts"),
            (self.kubernetes, "kubernetes"),
            (self.loop_detect, "loop"),
            (self.forward.is_some(), "forward"),
        ]
        .into_iter()
        .filter_map(|(present, name)| present.then_some(name))
        .collect()
    }
}

/// The `health` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub addr: SocketAddr,
    pub lameduck: Duration,
}

/// The `reload` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reload {
    pub interval: Duration,
    pub jitter: Duration,
}

/// The `kubernetes` directive: its zones (the block's when it names none) and options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kubernetes {
    pub zones: Vec<Name>,
    pub ttl: Option<u32>,
    pub pods: Option<PodsMode>,
    pub endpoint_pod_names: bool,
    pub ignore_empty_service: bool,
    pub noendpoints: bool,
    pub namespaces: Vec<String>,
    /// `fallthrough` with its zones (empty: every zone of the directive).
    pub fallthrough: Option<Vec<Name>>,
    pub kubeconfig: Option<PathBuf>,
    /// `kubeconfig FILE CONTEXT`: the context to use instead of the file's current one.
    pub context: Option<String>,
    /// `labels SELECTOR`: only Services and EndpointSlices it matches.
    pub labels: Option<String>,
    /// `namespace_labels SELECTOR`: only namespaces it matches.
    pub namespace_labels: Option<String>,
    /// svcplane's own: serve these manifest files or directories instead of watching a cluster.
    pub manifests: Vec<PathBuf>,
    pub startup_timeout: Option<Duration>,
}

/// Directives `svcplane dns` runs. The rest of CoreDNS's are refused by name, not ignored.
pub const SUPPORTED: &[&str] = &[
    "bind",
    "bufsize",
    "kubernetes",
    "forward",
    "cache",
    "hosts",
    "rewrite",
    "errors",
    "log",
    "health",
    "ready",
    "prometheus",
    "loadbalance",
    "loop",
    "reload",
];

/// What to use instead of a CoreDNS directive svcplane will not have.
fn instead_of(directive: &str) -> Option<&'static str> {
    Some(match directive {
        "autopath" => "pods resolve search-path names themselves (ndots), as with kube-dns",
        "template" => "answer such names from a real zone behind `forward`",
        "k8s_external" => "publish external addresses through an external DNS and `forward` to it",
        _ => return None,
    })
}

/// A failure where something is written.
type At = (Loc, String);

impl Corefile {
    /// What this Corefile asks of `svcplane dns`, or why it cannot run it (yet).
    /// `resolv_conf` reads the nameservers of a resolv.conf a `forward` names.
    pub fn plan(
        &self,
        resolv_conf: &dyn Fn(&str) -> Result<Vec<SocketAddr>, String>,
    ) -> Result<Plan, Error> {
        let fail = |(at, message): At| Error::Corefile {
            file: at.file.to_string(),
            line: at.line,
            message,
        };
        let mut plan = Plan::default();
        let mut seen_keys: Vec<(Name, u16, Loc)> = Vec::new();
        for block in &self.blocks {
            let port = block.keys[0].port;
            if let Some(other) = block.keys.iter().find(|k| k.port != port) {
                return Err(fail((
                    block.at(),
                    format!(
                        "keys on several ports ({port} and {}) in one block are not supported yet; write a block per port",
                        other.port
                    ),
                )));
            }
            for key in &block.keys {
                if let Some((_, _, first)) = seen_keys
                    .iter()
                    .find(|(z, p, _)| *z == key.zone && *p == key.port)
                {
                    return Err(fail((
                        block.at(),
                        format!(
                            "zone {} on port {} is already served by the block at {}:{}",
                            key.zone, key.port, first.file, first.line
                        ),
                    )));
                }
                seen_keys.push((key.zone.clone(), key.port, block.at()));
            }
            let read = read_block(block, resolv_conf, &mut plan).map_err(fail)?;
            plan.blocks.push(read);
        }
        Ok(plan)
    }
}

/// One block's directives; the process-wide ones go into `plan`.
fn read_block(
    block: &ServerBlock,
    resolv_conf: &dyn Fn(&str) -> Result<Vec<SocketAddr>, String>,
    plan: &mut Plan,
) -> Result<Block, At> {
    let mut out = Block::new(
        block.keys.iter().map(|k| k.zone.clone()).collect(),
        block.keys[0].port,
        block.at(),
    );
    let mut seen: Vec<&str> = Vec::new();
    for d in &block.directives {
        if seen.contains(&d.name.as_str()) && !matches!(d.name.as_str(), "log" | "rewrite" | "bind")
        {
            return Err((d.at(), format!("{}: only one per server block", d.name)));
        }
        seen.push(&d.name);
        match d.name.as_str() {
            "health" => {
                let health = self::health(d)?;
                if plan.health.is_some_and(|h| h != health) {
                    return Err((
                        d.at(),
                        "health: every block must give the same address and lameduck (one endpoint per process)".into(),
                    ));
                }
                plan.health = Some(health);
            }
            "ready" => {
                let ready = http_address(d, ":8181").map_err(|m| (d.at(), m))?;
                if plan.ready.is_some_and(|r| r != ready) {
                    return Err((
                        d.at(),
                        "ready: every block must give the same address (one endpoint per process)"
                            .into(),
                    ));
                }
                plan.ready = Some(ready);
            }
            "prometheus" => {
                let addr = http_address(d, "localhost:9153").map_err(|m| (d.at(), m))?;
                if plan.prometheus.is_some_and(|p| p != addr) {
                    return Err((
                        d.at(),
                        "prometheus: every block must give the same address (one endpoint per process)".into(),
                    ));
                }
                plan.prometheus = Some(addr);
                out.prometheus = true;
            }
            "reload" => {
                let reload = self::reload(d)?;
                if plan.reload.is_some_and(|r| r != reload) {
                    return Err((
                        d.at(),
                        "reload: every block must give the same interval and jitter".into(),
                    ));
                }
                plan.reload = Some(reload);
            }
            "log" => out.log.extend(self::log(d)?),
            "errors" => out.errors = Some(std::sync::Arc::new(self::errors(d)?)),
            "loadbalance" => {
                match d.args.as_slice() {
                    [] => {}
                    [policy] if policy == "round_robin" => {}
                    _ => {
                        return Err((
                            d.at(),
                            "loadbalance: only the round_robin policy is supported".into(),
                        ));
                    }
                }
                if !d.block.is_empty() {
                    return Err((d.at(), "loadbalance: takes no block".into()));
                }
                out.loadbalance = true;
            }
            "loop" => {
                if !d.args.is_empty() || !d.block.is_empty() {
                    return Err((d.at(), "loop: takes no arguments".into()));
                }
                out.loop_detect = true;
            }
            "forward" => out.forward = Some(self::forward(d, resolv_conf)?),
            "cache" => out.cache = Some(self::cache(d, block)?),
            "bind" => {
                if d.args.is_empty() {
                    return Err((d.at(), "bind: names at least one address".into()));
                }
                if !d.block.is_empty() {
                    return Err((
                        d.at(),
                        "bind: except is not supported yet; name the addresses to listen on".into(),
                    ));
                }
                for arg in &d.args {
                    let ip = arg.parse::<IpAddr>().map_err(|_| {
                        (
                            d.at(),
                            format!("bind: {arg:?} is not an address (interface names are not supported yet)"),
                        )
                    })?;
                    out.bind.push(ip);
                }
            }
            "bufsize" => {
                let size = match d.args.as_slice() {
                    [] => 1232,
                    [n] => n
                        .parse::<u16>()
                        .ok()
                        .filter(|n| (512..=4096).contains(n))
                        .ok_or_else(|| {
                            (
                                d.at(),
                                format!("bufsize: {n:?} is not a size of 512 to 4096"),
                            )
                        })?,
                    _ => return Err((d.at(), "bufsize: takes one size".into())),
                };
                out.bufsize = Some(size);
            }
            "hosts" => out.hosts = Some(self::hosts(d, block)?),
            "rewrite" => out.rewrite.push(self::rewrite(d)?),
            "kubernetes" => {
                if plan.kubernetes.is_some() {
                    return Err((
                        d.at(),
                        "kubernetes: only one kubernetes directive per Corefile is supported; put its zones in one block".into(),
                    ));
                }
                plan.kubernetes = Some(self::kubernetes(d, block)?);
                out.kubernetes = true;
            }
            other => {
                let why = match instead_of(other) {
                    Some(instead) => format!("{other} is not supported: {instead}"),
                    None => format!("{other} is not supported yet"),
                };
                return Err((
                    d.at(),
                    format!("{why} (supported: {})", SUPPORTED.join(", ")),
                ));
            }
        }
    }
    Ok(out)
}

/// `errors [stdout] { consolidate DURATION REGEXP [LEVEL] [show_first] ... }`.
fn errors(d: &Directive) -> Result<crate::errors::ErrorLog, At> {
    use crate::errors::{Consolidate, ErrorLog, Level};
    match d.args.as_slice() {
        [] => {}
        [out] if out == "stdout" => {}
        _ => return Err((d.at(), "errors: the only place to write is stdout".into())),
    }
    let mut log = ErrorLog::default();
    for option in &d.block {
        let at = |m: String| (option.at(), format!("errors {}: {m}", option.name));
        match (option.name.as_str(), option.args.as_slice()) {
            ("consolidate", [period, pattern, rest @ ..]) if rest.len() <= 2 => {
                let period = go_duration(period).map_err(at)?;
                if pattern.len() > 10_000 {
                    return Err(at(format!(
                        "the pattern is too long: {} > 10000",
                        pattern.len()
                    )));
                }
                let pattern = regex::Regex::new(pattern)
                    .map_err(|e| at(format!("{pattern:?} is not a regular expression: {e}")))?;
                let (mut level, mut show_first) = (None, false);
                for word in rest {
                    let named = match word.as_str() {
                        "error" => Some(Level::Error),
                        "warning" => Some(Level::Warning),
                        "info" => Some(Level::Info),
                        "debug" => Some(Level::Debug),
                        "show_first" => None,
                        other => return Err(at(format!("unknown option {other:?}"))),
                    };
                    match named {
                        Some(_) if level.is_some() => {
                            return Err(at("names one log level".into()));
                        }
                        Some(_) if show_first => {
                            return Err(at("the log level comes before show_first".into()));
                        }
                        Some(l) => level = Some(l),
                        None => show_first = true,
                    }
                }
                log.consolidate.push(std::sync::Arc::new(Consolidate::new(
                    period,
                    pattern,
                    level.unwrap_or(Level::Error),
                    show_first,
                )));
            }
            ("consolidate", _) => {
                return Err(at("takes DURATION REGEXP [LEVEL] [show_first]".into()));
            }
            ("stacktrace", _) => {
                return Err(at(
                    "is not supported: svcplane dns ends on a panic with its message (RUST_BACKTRACE=1 adds the trace)".into(),
                ));
            }
            (other, _) => {
                return Err((
                    option.at(),
                    format!("errors: {other} is not an option of errors (consolidate)"),
                ));
            }
        }
    }
    Ok(log)
}

/// `log [NAMES...] [FORMAT] { class success|denial|error|all ... }`: a rule per name (`.`
/// without one), the format being the last argument when it holds a `{`.
fn log(d: &Directive) -> Result<Vec<crate::log::Rule>, At> {
    use crate::log::{COMMON, Class, Rule};
    let mut args: &[String] = &d.args;
    let mut format = COMMON;
    if args.len() > 1
        && let Some(last) = args.last()
        && last.contains('{')
    {
        format = last;
        args = &args[..args.len() - 1];
    }
    let mut classes = Vec::new();
    for option in &d.block {
        match (option.name.as_str(), option.args.as_slice()) {
            ("class", names) if !names.is_empty() => {
                for name in names {
                    match name.as_str() {
                        "all" => {}
                        "success" => classes.push(Class::Success),
                        "denial" => classes.push(Class::Denial),
                        "error" => classes.push(Class::Error),
                        other => {
                            return Err((
                                option.at(),
                                format!(
                                    "log class: {other:?} is not a class (success, denial, error, all)"
                                ),
                            ));
                        }
                    }
                }
                if names.iter().any(|n| n == "all") {
                    classes.clear();
                }
            }
            ("class", _) => return Err((option.at(), "log class: names a class".into())),
            (other, _) => {
                return Err((
                    option.at(),
                    format!("log: {other} is not an option of log (class)"),
                ));
            }
        }
    }
    let scopes = if args.is_empty() {
        vec![Name::root()]
    } else {
        args.iter()
            .map(|n| zone_name(n).map_err(|m| (d.at(), format!("log: {m}"))))
            .collect::<Result<_, _>>()?
    };
    Ok(scopes
        .into_iter()
        .map(|scope| Rule::new(scope, format, classes.clone()))
        .collect())
}

/// A zone as a directive names it.
fn zone_name(text: &str) -> Result<Name, String> {
    let fqdn = if text.ends_with('.') {
        text.to_ascii_lowercase()
    } else {
        format!("{}.", text.to_ascii_lowercase())
    };
    Name::from_ascii(&fqdn).map_err(|e| format!("{text} is not a zone ({e})"))
}

/// `cache [TTL] [ZONES...] { options }`.
fn cache(d: &Directive, block: &ServerBlock) -> Result<cache::Settings, At> {
    let mut settings = cache::Settings::default();
    let mut args = d.args.as_slice();
    if let Some(first) = args.first()
        && let Ok(ttl) = first.parse::<i64>()
    {
        if ttl <= 0 {
            return Err((
                d.at(),
                format!("cache: the TTL must be positive, not {ttl}"),
            ));
        }
        let ttl = u32::try_from(ttl).unwrap_or(u32::MAX);
        settings.success.max_ttl = ttl;
        settings.denial.max_ttl = ttl;
        args = &args[1..];
    }
    settings.zones = if args.is_empty() {
        block.keys.iter().map(|k| k.zone.clone()).collect()
    } else {
        args.iter()
            .map(|z| zone_name(z).map_err(|m| (d.at(), format!("cache: {m}"))))
            .collect::<Result<_, _>>()?
    };
    for option in &d.block {
        let at = |m: String| (option.at(), format!("cache {}: {m}", option.name));
        let number = |text: &str| -> Result<i64, At> {
            text.parse::<i64>()
                .map_err(|_| at(format!("{text:?} is not a number")))
        };
        let duration = |text: &str| go_duration(text).map_err(at);
        match (option.name.as_str(), option.args.as_slice()) {
            (kind @ ("success" | "denial"), [cap, rest @ ..]) if rest.len() <= 2 => {
                let part = if kind == "success" {
                    &mut settings.success
                } else {
                    &mut settings.denial
                };
                let cap = number(cap)?;
                if cap <= 0 {
                    return Err(at("the capacity must be positive".into()));
                }
                part.capacity = cap as usize;
                if let Some(ttl) = rest.first() {
                    let ttl = number(ttl)?;
                    if ttl <= 0 {
                        return Err(at(format!("the TTL must be positive, not {ttl}")));
                    }
                    part.max_ttl = u32::try_from(ttl).unwrap_or(u32::MAX);
                }
                if let Some(min) = rest.get(1) {
                    let min = number(min)?;
                    if min < 0 {
                        return Err(at(format!("the minimum TTL cannot be negative ({min})")));
                    }
                    part.min_ttl = u32::try_from(min).unwrap_or(u32::MAX);
                }
            }
            ("success" | "denial", _) => {
                return Err(at("takes CAPACITY [TTL [MINTTL]]".into()));
            }
            ("prefetch", [amount, rest @ ..]) if rest.len() <= 2 => {
                let amount = number(amount)?;
                if amount < 0 {
                    return Err(at(format!("the amount cannot be negative ({amount})")));
                }
                let mut prefetch = cache::Prefetch {
                    amount: amount as usize,
                    window: Duration::from_secs(60),
                    percentage: 10,
                };
                if let Some(window) = rest.first() {
                    prefetch.window = duration(window)?;
                }
                if let Some(pct) = rest.get(1) {
                    let Some(n) = pct.strip_suffix('%') else {
                        return Err(at(format!("{pct:?}: the percentage ends in %")));
                    };
                    let n = number(n)?;
                    if !(10..=90).contains(&n) {
                        return Err(at(format!(
                            "the percentage is between 10% and 90%, not {n}%"
                        )));
                    }
                    prefetch.percentage = n as u32;
                }
                settings.prefetch = Some(prefetch);
            }
            ("prefetch", _) => return Err(at("takes AMOUNT [DURATION [PERCENTAGE%]]".into())),
            ("serve_stale", args) if args.len() <= 4 => {
                let mut stale = cache::ServeStale {
                    up_to: Duration::from_secs(3600),
                    verify: false,
                    verify_timeout: Duration::ZERO,
                    response_ttl: 0,
                };
                if let Some(up_to) = args.first() {
                    stale.up_to = duration(up_to)?;
                }
                if let Some(mode) = args.get(1) {
                    match mode.to_ascii_lowercase().as_str() {
                        "immediate" => stale.verify = false,
                        "verify" => stale.verify = true,
                        _ => {
                            return Err(at(format!(
                                "the refresh mode is immediate or verify, not {mode:?}"
                            )));
                        }
                    }
                }
                let ttl_at = if stale.verify {
                    if let Some(timeout) = args.get(2) {
                        stale.verify_timeout = duration(timeout)?;
                    }
                    3
                } else {
                    2
                };
                if let Some(ttl) = args.get(ttl_at) {
                    let ttl = duration(ttl)?;
                    if ttl.subsec_nanos() != 0 {
                        return Err(at("the response TTL is a whole number of seconds".into()));
                    }
                    stale.response_ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
                }
                if args.len() > ttl_at + 1 {
                    return Err(at(
                        "FAILURE_RECHECK is not supported yet; stop after RESPONSE_TTL".into(),
                    ));
                }
                settings.serve_stale = Some(stale);
            }
            ("serve_stale", _) => {
                return Err(at(
                    "takes [DURATION] [immediate [RESPONSE_TTL] | verify [TIMEOUT [RESPONSE_TTL]]]"
                        .into(),
                ));
            }
            ("servfail", [d]) => {
                let d = duration(d)?;
                if d > Duration::from_secs(300) {
                    return Err(at(
                        "caching a SERVFAIL for over 5 minutes is not permitted".into()
                    ));
                }
                settings.servfail = d;
            }
            ("servfail", _) => return Err(at("takes one duration".into())),
            ("disable", [kind, zones @ ..]) => {
                let zones = if zones.is_empty() {
                    vec![Name::root()]
                } else {
                    zones
                        .iter()
                        .map(|z| zone_name(z).map_err(at))
                        .collect::<Result<_, _>>()?
                };
                match kind.as_str() {
                    "success" => settings.no_success = zones,
                    "denial" => settings.no_denial = zones,
                    _ => return Err(at(format!("disables success or denial, not {kind:?}"))),
                }
            }
            ("disable", _) => return Err(at("takes success|denial [ZONES...]".into())),
            ("keepttl", []) => settings.keepttl = true,
            ("keepttl", _) => return Err(at("takes no value".into())),
            ("serve_stale_policy", _) => return Err(at("is not supported yet".into())),
            (other, _) => {
                return Err((
                    option.at(),
                    format!(
                        "cache: {other} is not an option of cache (success, denial, prefetch, serve_stale, servfail, disable, keepttl)"
                    ),
                ));
            }
        }
    }
    Ok(settings)
}

/// `hosts [FILE [ZONES...]] { INLINE... ttl N; no_reverse; reload D; fallthrough [ZONES...];
/// fallthrough_unsupported }`: as CoreDNS reads it, a line that is not an option is an inline
/// entry until `fallthrough` has been given.
fn hosts(d: &Directive, block: &ServerBlock) -> Result<crate::hosts::Settings, At> {
    let mut settings = crate::hosts::Settings::default();
    if let [file, zones @ ..] = d.args.as_slice() {
        settings.file = PathBuf::from(file);
        if !zones.is_empty() {
            settings.zones = zones
                .iter()
                .map(|z| zone_name(z).map_err(|m| (d.at(), format!("hosts: {m}"))))
                .collect::<Result<_, _>>()?;
        } else {
            settings.zones = block.keys.iter().map(|k| k.zone.clone()).collect();
        }
    } else {
        settings.zones = block.keys.iter().map(|k| k.zone.clone()).collect();
    }
    for option in &d.block {
        let at = |m: String| (option.at(), format!("hosts {}: {m}", option.name));
        match (option.name.as_str(), option.args.as_slice()) {
            ("fallthrough", zones) => {
                settings.fallthrough = Some(
                    zones
                        .iter()
                        .map(|z| zone_name(z).map_err(at))
                        .collect::<Result<_, _>>()?,
                );
            }
            ("fallthrough_unsupported", []) => settings.fallthrough_unsupported = true,
            ("no_reverse", []) => settings.no_reverse = true,
            ("ttl", [n]) => {
                settings.ttl = n
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=65535).contains(n))
                    .ok_or_else(|| at(format!("{n:?} is not a TTL of 1 to 65535 seconds")))?;
            }
            ("ttl", _) => return Err(at("needs a time in seconds".into())),
            ("reload", [d]) => settings.reload = go_duration(d).map_err(at)?,
            ("reload", _) => return Err(at("needs a duration (0s to disable)".into())),
            ("fallthrough_unsupported" | "no_reverse", _) => {
                return Err(at("takes no value".into()));
            }
            (other, _) if settings.fallthrough.is_some() => {
                return Err((
                    option.at(),
                    format!(
                        "hosts: unknown property {other:?} (after fallthrough, inline entries are not read)"
                    ),
                ));
            }
            (first, rest) => {
                let mut line = vec![first.to_string()];
                line.extend(rest.iter().cloned());
                settings.inline.push(line.join(" "));
            }
        }
    }
    if settings.fallthrough_unsupported && settings.fallthrough.is_none() {
        return Err((
            d.at(),
            "hosts: fallthrough_unsupported requires fallthrough".into(),
        ));
    }
    Ok(settings)
}

/// `rewrite [continue|stop] name [exact|prefix|suffix|substring|regex] FROM TO [answer auto |
/// answer name FROM TO | answer value FROM TO ...]`. As CoreDNS: FROM and TO are lower-cased
/// and made fully qualified (a regex's FROM aside), so `prefix api- web-` matches `api-.`.
fn rewrite(d: &Directive) -> Result<crate::rewrite::NameRule, At> {
    use crate::rewrite::{Match, NameRule, ResponseRule, Rewriter};
    let at = |m: String| (d.at(), format!("rewrite: {m}"));
    if !d.block.is_empty() {
        return Err(at(
            "the block form is not supported yet; write one rule per line".into(),
        ));
    }
    let mut args: &[String] = &d.args;
    let mut continues = false;
    match args.first().map(|a| a.to_ascii_lowercase()).as_deref() {
        Some("continue") => {
            continues = true;
            args = &args[1..];
        }
        Some("stop") => args = &args[1..],
        _ => {}
    }
    match args.first().map(String::as_str) {
        Some("name") => args = &args[1..],
        Some(other) => {
            return Err(at(format!(
                "{other} rules are not supported yet (name rules are)"
            )));
        }
        None => {
            return Err(at(
                "names the rule, e.g. `rewrite name exact a.example. b.example.`".into(),
            ));
        }
    }
    let fqdn = |s: &str| {
        let lower = s.to_ascii_lowercase();
        if lower.ends_with('.') {
            lower
        } else {
            format!("{lower}.")
        }
    };
    let (kind, from, to, rest) = match args {
        [from, to] => ("exact".to_string(), from, to, &args[2..]),
        [kind, from, to, rest @ ..]
            if matches!(
                kind.to_ascii_lowercase().as_str(),
                "exact" | "prefix" | "suffix" | "substring" | "regex"
            ) =>
        {
            (kind.to_ascii_lowercase(), from, to, rest)
        }
        [from, to, rest @ ..] if rest.first().is_some_and(|a| a == "answer") => {
            ("exact".to_string(), from, to, rest)
        }
        _ => {
            return Err(at(
                "takes [exact|prefix|suffix|substring|regex] FROM TO [answer ...]".into(),
            ));
        }
    };
    let regex = |pattern: &str| {
        regex::Regex::new(pattern)
            .map_err(|e| at(format!("{pattern:?} is not a regular expression: {e}")))
    };
    let matcher = match kind.as_str() {
        "exact" => Match::Exact(fqdn(from)),
        "prefix" => Match::Prefix(fqdn(from)),
        "suffix" => Match::Suffix(fqdn(from)),
        "substring" => Match::Substring(fqdn(from)),
        _ => Match::Regex(regex(from)?),
    };
    let mut rule = NameRule {
        continues,
        matcher,
        to: fqdn(to),
        auto: false,
        answers: Vec::new(),
    };
    let mut rest = rest.iter();
    while let Some(word) = rest.next() {
        if word != "answer" {
            return Err(at(format!(
                "{word:?}: expected `answer auto|name|value ...`"
            )));
        }
        match rest.next().map(String::as_str) {
            Some("auto") => rule.auto = true,
            Some(which @ ("name" | "value")) => {
                let (Some(from), Some(to)) = (rest.next(), rest.next()) else {
                    return Err(at(format!("answer {which} takes FROM TO")));
                };
                let back = Rewriter::Regex {
                    pattern: regex(from)?,
                    to: fqdn(to),
                };
                rule.answers.push(if which == "name" {
                    ResponseRule::Name(back)
                } else {
                    ResponseRule::Value(back)
                });
            }
            other => {
                return Err(at(format!(
                    "answer {}: is auto, name or value",
                    other.unwrap_or("")
                )));
            }
        }
    }
    if rule.auto
        && rule
            .answers
            .iter()
            .any(|a| matches!(a, ResponseRule::Name(_)))
    {
        return Err(at(
            "answer auto cannot be combined with answer name rules".into()
        ));
    }
    Ok(rule)
}

/// `reload [INTERVAL [JITTER]]`: 30 s and 15 s by default; the interval at least 2 s, the jitter
/// 0 or at least 1 s and at most half the interval.
fn reload(d: &Directive) -> Result<Reload, At> {
    let at = |m: String| (d.at(), format!("reload: {m}"));
    let (interval, jitter) = match d.args.as_slice() {
        [] => (None, None),
        [interval] => (Some(interval), None),
        [interval, jitter] => (Some(interval), Some(jitter)),
        _ => return Err(at("takes [INTERVAL [JITTER]]".into())),
    };
    let interval = match interval {
        Some(text) => go_duration(text).map_err(at)?,
        None => Duration::from_secs(30),
    };
    if interval < Duration::from_secs(2) {
        return Err(at("the interval must be at least 2s".into()));
    }
    let jitter = match jitter {
        Some(text) => go_duration(text).map_err(at)?,
        None => Duration::from_secs(15),
    };
    if !jitter.is_zero() && jitter < Duration::from_secs(1) {
        return Err(at("the jitter must be 0 or at least 1s".into()));
    }
    if !d.block.is_empty() {
        return Err(at("takes no block".into()));
    }
    Ok(Reload {
        interval,
        jitter: jitter.min(interval / 2),
    })
}

/// The address of an HTTP directive (`:8080`, `127.0.0.1:8080`), `default` without one.
fn http_address(d: &Directive, default: &str) -> Result<SocketAddr, String> {
    let text = match d.args.as_slice() {
        [] => default,
        [one] => one.as_str(),
        _ => return Err(format!("{}: takes at most one address", d.name)),
    };
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => match text.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => text.to_string(),
        },
    };
    full.parse().map_err(|_| {
        format!(
            "{}: {text:?} is not an address such as :8080 or 127.0.0.1:8080",
            d.name
        )
    })
}

/// `forward FROM TO... { options }`: TO an address (`dns://` allowed, port 53 by default) or
/// a resolv.conf file.
fn forward(
    d: &Directive,
    resolv_conf: &dyn Fn(&str) -> Result<Vec<SocketAddr>, String>,
) -> Result<Forward, At> {
    let at = |loc: Loc| move |m: String| (loc.clone(), format!("forward: {m}"));
    let [from, to @ ..] = d.args.as_slice() else {
        return Err((
            d.at(),
            "forward: needs the zone and at least one upstream, e.g. `forward . /etc/resolv.conf`"
                .into(),
        ));
    };
    if to.is_empty() {
        return Err((d.at(), "forward: needs at least one upstream".into()));
    }
    let zone = zone_name;
    let from = zone(from).map_err(at(d.at()))?;
    let mut upstreams = Vec::new();
    // Plain DNS or DNS over TLS (`tls://`, port 853 by default), one of them for every upstream.
    let mut schemes = Vec::new();
    for target in to {
        if target.contains('/') && !target.contains("://") {
            upstreams.extend(resolv_conf(target).map_err(at(d.at()))?);
            schemes.push("dns");
            continue;
        }
        let (scheme, addr) = match target.split_once("://") {
            Some(("dns", rest)) => ("dns", rest),
            Some(("tls", rest)) => ("tls", rest),
            Some((scheme, _)) => {
                return Err((
                    d.at(),
                    format!(
                        "forward: {scheme}:// upstreams are not supported yet; use dns:// or tls://"
                    ),
                ));
            }
            None => ("dns", target.as_str()),
        };
        schemes.push(scheme);
        let default_port = if scheme == "tls" { 853 } else { 53 };
        let parsed = addr
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| {
                let bare = addr.trim_start_matches('[').trim_end_matches(']');
                bare.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, default_port))
            })
            .ok_or_else(|| {
                (
                    d.at(),
                    format!("forward: {target} is not an upstream address or a resolv.conf file"),
                )
            })?;
        upstreams.push(parsed);
    }
    if upstreams.is_empty() {
        return Err((
            d.at(),
            "forward: no upstream (the resolv.conf names no nameserver)".into(),
        ));
    }
    if upstreams.len() > MAX_UPSTREAMS {
        return Err((
            d.at(),
            format!(
                "forward: {} upstreams; at most {MAX_UPSTREAMS}",
                upstreams.len()
            ),
        ));
    }
    schemes.dedup();
    if schemes.len() > 1 {
        return Err((
            d.at(),
            "forward: plain and tls:// upstreams cannot be mixed in one forward".into(),
        ));
    }
    let mut forward = Forward {
        from,
        tls: (schemes == ["tls"]).then(crate::forward::Tls::default),
        ..Forward::everything_to(upstreams)
    };
    for option in &d.block {
        let fail = |m: &str| (option.at(), format!("forward {}: {m}", option.name));
        match (option.name.as_str(), option.args.as_slice()) {
            ("policy", [p]) => {
                forward.policy = match p.as_str() {
                    "random" => Policy::Random,
                    "round_robin" => Policy::RoundRobin,
                    "sequential" => Policy::Sequential,
                    _ => return Err(fail("is random, round_robin or sequential")),
                }
            }
            ("max_concurrent", [n]) => {
                forward.max_concurrent = Some(
                    n.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| fail("takes a positive number"))?,
                )
            }
            ("force_tcp", []) => forward.force_tcp = true,
            ("prefer_udp", []) => forward.prefer_udp = true,
            ("except", zones) if !zones.is_empty() => {
                for z in zones {
                    forward.except.push(zone(z).map_err(|m| fail(&m))?);
                }
            }
            ("max_fails", [n]) => {
                forward.max_fails = n
                    .parse()
                    .map_err(|_| fail("takes a number (0: never mark an upstream down)"))?
            }
            ("health_check", [interval, rest @ ..]) => {
                forward.health_check = go_duration(interval).map_err(|m| fail(&m))?;
                let mut rest = rest.iter();
                while let Some(word) = rest.next() {
                    match word.as_str() {
                        "no_rec" => forward.health_check_recursion = false,
                        "domain" => {
                            let Some(name) = rest.next() else {
                                return Err(fail("domain needs a name"));
                            };
                            forward.health_check_domain = zone(name).map_err(|m| fail(&m))?;
                        }
                        other => {
                            return Err(fail(&format!(
                                "{other:?} is not an option of health_check (no_rec, domain NAME)"
                            )));
                        }
                    }
                }
            }
            ("expire", [d]) => forward.expire = go_duration(d).map_err(|m| fail(&m))?,
            ("policy" | "max_concurrent" | "except" | "max_fails" | "expire", _) => {
                return Err(fail("takes one value"));
            }
            ("health_check", _) => return Err(fail("takes an interval")),
            ("force_tcp" | "prefer_udp", _) => return Err(fail("takes no value")),
            ("tls" | "tls_servername", _) if forward.tls.is_none() => {
                return Err(fail("applies to tls:// upstreams only"));
            }
            ("tls", files) if files.len() <= 3 => {
                let tls = forward.tls.get_or_insert_with(Default::default);
                match files {
                    [] => {}
                    [ca] => tls.ca = Some(PathBuf::from(ca)),
                    [cert, key] => tls.client = Some((PathBuf::from(cert), PathBuf::from(key))),
                    [cert, key, ca] => {
                        tls.client = Some((PathBuf::from(cert), PathBuf::from(key)));
                        tls.ca = Some(PathBuf::from(ca));
                    }
                    _ => unreachable!("at most three"),
                }
            }
            ("tls", _) => return Err(fail("takes [CA] or [CERT KEY [CA]]")),
            ("tls_servername", [name]) => {
                forward.tls.get_or_insert_with(Default::default).server_name = Some(name.clone());
            }
            ("tls_servername", _) => return Err(fail("takes one name")),
            (other, _) => {
                return Err((
                    option.at(),
                    format!(
                        "forward {other} is not supported yet (supported: policy, max_concurrent, force_tcp, prefer_udp, except, max_fails, health_check, expire, tls, tls_servername)"
                    ),
                ));
            }
        }
    }
    if forward.force_tcp && forward.prefer_udp {
        return Err((
            d.at(),
            "forward: force_tcp and prefer_udp exclude each other".into(),
        ));
    }
    Ok(forward)
}

/// `health [ADDR] { lameduck D }`.
fn health(d: &Directive) -> Result<Health, At> {
    let addr = http_address(d, ":8080").map_err(|m| (d.at(), m))?;
    let mut lameduck = Duration::ZERO;
    for option in &d.block {
        match (option.name.as_str(), option.args.as_slice()) {
            ("lameduck", [value]) => {
                lameduck = go_duration(value)
                    .map_err(|m| (option.at(), format!("health lameduck: {m}")))?
            }
            ("lameduck", _) => {
                return Err((option.at(), "health lameduck: takes one duration".into()));
            }
            (other, _) => {
                return Err((
                    option.at(),
                    format!("health: {other} is not an option of health (lameduck)"),
                ));
            }
        }
    }
    Ok(Health { addr, lameduck })
}

/// The `kubernetes` directive of `block`, or the line and what is wrong there.
fn kubernetes(d: &Directive, block: &ServerBlock) -> Result<Kubernetes, At> {
    let zone = |text: &str| -> Result<Name, At> {
        let fqdn = if text.ends_with('.') {
            text.to_ascii_lowercase()
        } else {
            format!("{}.", text.to_ascii_lowercase())
        };
        Name::from_ascii(&fqdn)
            .map_err(|e| (d.at(), format!("kubernetes: {text} is not a zone ({e})")))
    };
    let mut k = Kubernetes {
        zones: if d.args.is_empty() {
            block.keys.iter().map(|key| key.zone.clone()).collect()
        } else {
            d.args.iter().map(|z| zone(z)).collect::<Result<_, _>>()?
        },
        ..Kubernetes::default()
    };
    for option in &d.block {
        let at = |m: String| (option.at(), format!("kubernetes {}: {m}", option.name));
        let one = || match option.args.as_slice() {
            [value] => Ok(value.as_str()),
            _ => Err(at("takes exactly one value".into())),
        };
        let none = || {
            if option.args.is_empty() {
                Ok(())
            } else {
                Err(at("takes no value".into()))
            }
        };
        match option.name.as_str() {
            "ttl" => {
                let ttl: u32 = one()?
                    .parse()
                    .map_err(|_| at("must be a number of seconds".into()))?;
                if ttl > 3600 {
                    return Err(at(format!("{ttl} is above 3600")));
                }
                k.ttl = Some(ttl);
            }
            "pods" => k.pods = Some(one()?.parse().map_err(at)?),
            "endpoint_pod_names" => {
                none()?;
                k.endpoint_pod_names = true;
            }
            "noendpoints" => {
                none()?;
                k.noendpoints = true;
            }
            "ignore" => match option.args.as_slice() {
                [what] if what == "empty_service" => k.ignore_empty_service = true,
                _ => return Err(at("the only thing to ignore is empty_service".into())),
            },
            "namespaces" => {
                if option.args.is_empty() {
                    return Err(at("names at least one namespace".into()));
                }
                k.namespaces.extend(option.args.iter().cloned());
            }
            "fallthrough" => {
                k.fallthrough = Some(
                    option
                        .args
                        .iter()
                        .map(|z| zone(z))
                        .collect::<Result<_, _>>()?,
                );
            }
            "kubeconfig" => match option.args.as_slice() {
                [path] => k.kubeconfig = Some(PathBuf::from(path)),
                [path, context] => {
                    k.kubeconfig = Some(PathBuf::from(path));
                    k.context = Some(context.clone());
                }
                _ => {
                    return Err(at(
                        "takes the kubeconfig's path and optionally a context".into()
                    ));
                }
            },
            which @ ("labels" | "namespace_labels") => {
                if option.args.is_empty() {
                    return Err(at(
                        "takes a label selector, e.g. environment in (production, staging)".into(),
                    ));
                }
                let selector = option.args.join(" ");
                ::cache::selector::LabelSelector::parse(&selector)
                    .map_err(|e| at(format!("{selector:?} is not a label selector: {e}")))?;
                if which == "labels" {
                    k.labels = Some(selector);
                } else {
                    k.namespace_labels = Some(selector);
                }
            }
            "endpoint" | "tls" => {
                return Err(at(
                    "is not supported yet; name the API server and its credentials in a kubeconfig (kubeconfig FILE [CONTEXT])".into(),
                ));
            }
            "manifests" => {
                if option.args.is_empty() {
                    return Err(at("names at least one file or directory".into()));
                }
                k.manifests.extend(option.args.iter().map(PathBuf::from));
            }
            "startup_timeout" => {
                k.startup_timeout = Some(go_duration(one()?).map_err(at)?);
            }
            other => {
                return Err(at(format!(
                    "{other} is not supported yet (supported: ttl, pods, endpoint_pod_names, noendpoints, ignore empty_service, namespaces, namespace_labels, labels, fallthrough, kubeconfig, manifests, startup_timeout)"
                )));
            }
        }
    }
    if (k.kubeconfig.is_some() || k.labels.is_some() || k.namespace_labels.is_some())
        && !k.manifests.is_empty()
    {
        return Err((
            d.at(),
            "kubernetes: manifests excludes kubeconfig, labels and namespace_labels (they select what a cluster is watched for)".into(),
        ));
    }
    Ok(k)
}

/// A Go-style duration as CoreDNS takes it (`5s`, `1m30s`, `250ms`).
fn go_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 5s"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corefile::tests::KUBEADM;

    fn no_resolv(path: &str) -> Result<Vec<SocketAddr>, String> {
        match path {
            "/etc/resolv.conf" => Ok(vec!["10.0.0.2:53".parse().unwrap()]),
            _ => Err(format!("{path}: cannot read it")),
        }
    }

    fn plan(text: &str) -> Result<Plan, Error> {
        crate::corefile::parse(text, "Corefile", |_| None)
            .unwrap()
            .plan(&no_resolv)
    }

    /// Why a Corefile of `text` does not run.
    fn refusal(text: &str) -> String {
        plan(text).unwrap_err().to_string()
    }

    /// Each directive line of `cases`, alone in a block, is refused with a message holding its
    /// needle.
    fn refuses_each(cases: &[(&str, &str)]) {
        for (text, needle) in cases {
            let err = refusal(&format!(".:53 {{\n  {text}\n}}\n"));
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    #[test]
    fn a_refusal_in_an_imported_file_names_that_file_and_its_line() {
        let include = |pattern: &str, _: &str| -> Result<Vec<(String, String)>, String> {
            assert_eq!(pattern, "custom/*.override");
            Ok(vec![("custom/x.override".into(), "log\ndnssec\n".into())])
        };
        let corefile = crate::corefile::parse_with(
            ".:53 {\n  import custom/*.override\n  kubernetes\n}\n",
            "Corefile",
            &|_| None,
            &include,
        )
        .unwrap();
        let err = corefile.plan(&no_resolv).unwrap_err().to_string();
        assert!(
            err.starts_with("custom/x.override:2: dnssec is not supported yet"),
            "{err}"
        );
    }

    #[test]
    fn kubeadms_corefile_runs_with_every_directive() {
        let plan = plan(KUBEADM).unwrap();
        let [block] = plan.blocks.as_slice() else {
            panic!("one block");
        };
        assert_eq!((block.port, block.zones.clone()), (53, vec![Name::root()]));
        assert!(
            block.errors.is_some() && block.loadbalance && block.loop_detect && block.prometheus
        );
        assert!(block.kubernetes && block.log.is_empty());
        assert_eq!(block.first_plugin(), "errors");
        let cache = block.cache.clone().unwrap();
        assert_eq!((cache.success.max_ttl, cache.denial.max_ttl), (30, 30));
        assert_eq!(cache.no_success, [name("cluster.local.")]);
        assert_eq!(cache.no_denial, [name("cluster.local.")]);
        assert_eq!(cache.zones, [Name::root()]);
        assert_eq!(block.forward.clone().unwrap().max_concurrent, Some(1000));
        assert_eq!(plan.prometheus, Some("0.0.0.0:9153".parse().unwrap()));
        assert_eq!(plan.ready, Some("0.0.0.0:8181".parse().unwrap()));
        assert_eq!(
            plan.reload,
            Some(Reload {
                interval: Duration::from_secs(30),
                jitter: Duration::from_secs(15)
            })
        );
        let k = plan.kubernetes.unwrap();
        assert_eq!(k.ttl, Some(30));
        assert_eq!(
            block.plugins(&plan_of_kubeadm()),
            [
                "reload",
                "ready",
                "health",
                "prometheus",
                "errors",
                "loadbalance",
                "cache",
                "kubernetes",
                "loop",
                "forward"
            ]
        );
    }

    fn plan_of_kubeadm() -> Plan {
        plan(KUBEADM).unwrap()
    }

    #[test]
    fn a_kubernetes_block_becomes_the_servers_options() {
        let plan = plan(
            "cluster.local:1053 in-addr.arpa:1053 {\n  kubernetes {\n    pods verified\n    ttl 30\n    endpoint_pod_names\n    noendpoints\n    ignore empty_service\n    namespaces a b\n    fallthrough in-addr.arpa\n    manifests /m.yaml\n    startup_timeout 1m30s\n  }\n}\n",
        )
        .unwrap();
        assert_eq!(plan.blocks[0].port, 1053);
        let k = plan.kubernetes.unwrap();
        assert_eq!(k.zones, [name("cluster.local."), name("in-addr.arpa.")]);
        assert_eq!((k.ttl, k.pods), (Some(30), Some(PodsMode::Verified)));
        assert!(k.endpoint_pod_names && k.noendpoints && k.ignore_empty_service);
        assert_eq!(k.namespaces, ["a", "b"]);
        assert_eq!(k.fallthrough, Some(vec![name("in-addr.arpa.")]));
        assert_eq!(k.manifests, [PathBuf::from("/m.yaml")]);
        assert_eq!(k.startup_timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn what_svcplane_does_not_run_is_refused_with_file_line_and_the_supported_list() {
        let err = refusal(".:53 {\n  kubernetes\n  autopath @kubernetes\n}\n");
        assert!(
            err.starts_with("Corefile:3: autopath is not supported: pods resolve"),
            "{err}"
        );
        assert!(err.ends_with("(supported: bind, bufsize, kubernetes, forward, cache, hosts, rewrite, errors, log, health, ready, prometheus, loadbalance, loop, reload)"), "{err}");
        let err = refusal(".:53 {\n  dnssec\n}\n");
        assert!(
            err.starts_with("Corefile:2: dnssec is not supported yet"),
            "{err}"
        );
        let err = refusal(".:53 {\n  kubernetes {\n    ttl 4000\n  }\n}\n");
        assert_eq!(err, "Corefile:3: kubernetes ttl: 4000 is above 3600");
        let err = refusal(".:53 {\n  kubernetes\n}\n.:54 {\n  kubernetes\n}\n");
        assert!(
            err.starts_with("Corefile:5: kubernetes: only one kubernetes directive"),
            "{err}"
        );
        let err = refusal(".:53 {\n  errors\n}\n.:53 {\n  errors\n}\n");
        assert!(
            err.starts_with(
                "Corefile:4: zone . on port 53 is already served by the block at Corefile:1"
            ),
            "{err}"
        );
    }

    #[test]
    fn several_blocks_each_keep_their_zones_port_and_plugins() {
        let plan = plan(".:53 {\n  kubernetes cluster.local\n  forward . 10.0.0.1\n}\ncorp.example:53 {\n  forward . 10.0.0.53\n  cache 30\n}\n.:5353 {\n  forward . 10.0.0.2\n}\n").unwrap();
        assert_eq!(plan.blocks.len(), 3);
        assert_eq!(plan.blocks[1].zones, [name("corp.example.")]);
        assert_eq!(plan.blocks[1].first_plugin(), "cache");
        assert!(!plan.blocks[1].kubernetes && plan.blocks[0].kubernetes);
        assert_eq!(plan.blocks[2].port, 5353);
        assert_eq!(
            plan.blocks[1].cache.as_ref().unwrap().zones,
            [name("corp.example.")]
        );
    }

    #[test]
    fn health_and_ready_take_addresses_and_a_lameduck() {
        let plan = plan(
            ".:53 {\n  health {\n    lameduck 5s\n  }\n  ready 127.0.0.1:9181\n  kubernetes\n}\n",
        )
        .unwrap();
        assert_eq!(
            plan.health,
            Some(Health {
                addr: "0.0.0.0:8080".parse().unwrap(),
                lameduck: Duration::from_secs(5)
            })
        );
        assert_eq!(plan.ready, Some("127.0.0.1:9181".parse().unwrap()));
        let err = refusal(".:53 {\n  kubernetes\n  ready\n  ready\n}\n");
        assert_eq!(err, "Corefile:4: ready: only one per server block");
        // As CoreDNS: `errors` once (plugin.ErrOnce), `bind` lines add up.
        let err = refusal(".:53 {\n  errors\n  errors\n}\n");
        assert_eq!(err, "Corefile:3: errors: only one per server block");
        let bound = self::plan(".:53 {\n  bind 127.0.0.1\n  bind 127.0.0.2 ::1\n}\n").unwrap();
        assert_eq!(bound.blocks[0].bind.len(), 3);
        let err = refusal(".:53 {\n  kubernetes\n  health {\n    lameduck soon\n  }\n}\n");
        assert!(
            err.starts_with("Corefile:4: health lameduck: \"soon\" is not a duration"),
            "{err}"
        );
        let err = refusal(".:53 {\n  ready :8181\n}\n.:54 {\n  ready :8182\n}\n");
        assert!(
            err.starts_with("Corefile:5: ready: every block must give the same address"),
            "{err}"
        );
    }

    #[test]
    fn forward_takes_addresses_resolv_conf_and_its_options() {
        let plan = plan(".:53 {\n  kubernetes cluster.local\n  forward . dns://127.0.0.1:5300 /etc/resolv.conf [::1] {\n    policy sequential\n    max_concurrent 1000\n    except example.com\n    max_fails 3\n    health_check 1s no_rec domain example.org\n    expire 20s\n  }\n}\n")
            .unwrap();
        let f = plan.blocks[0].forward.clone().unwrap();
        assert_eq!(f.from, Name::root());
        assert_eq!(
            f.upstreams,
            [
                "127.0.0.1:5300".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            (f.policy, f.max_concurrent),
            (Policy::Sequential, Some(1000))
        );
        assert_eq!(f.except, [name("example.com.")]);
        assert_eq!(f.max_fails, 3);
        assert_eq!(f.health_check, Duration::from_secs(1));
        assert!(!f.health_check_recursion);
        assert_eq!(f.health_check_domain, name("example.org."));
        assert_eq!(f.expire, Duration::from_secs(20));
        let err = refusal(".:53 {\n  kubernetes\n  forward . 10.0.0.1 {\n    tls\n  }\n}\n");
        assert!(
            err.starts_with("Corefile:4: forward tls: applies to tls:// upstreams only"),
            "{err}"
        );
        let dot = super::tests::plan(".:53 {\n  forward . tls://10.0.0.1 tls://10.0.0.2:8853 {\n    tls /ca.pem\n    tls_servername dns.example\n  }\n}\n").unwrap();
        let f = dot.blocks[0].forward.clone().unwrap();
        assert_eq!(
            f.upstreams,
            [
                "10.0.0.1:853".parse().unwrap(),
                "10.0.0.2:8853".parse().unwrap()
            ]
        );
        let tls = f.tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("dns.example"));
        let err = refusal(".:53 {\n  forward . tls://10.0.0.1 10.0.0.2\n}\n");
        assert!(err.contains("cannot be mixed"), "{err}");
        let err = refusal(".:53 {\n  kubernetes\n  forward . /nowhere\n}\n");
        assert_eq!(err, "Corefile:3: forward: /nowhere: cannot read it");
    }

    #[test]
    fn cache_takes_coredns_options_and_refuses_bad_values() {
        let plan = plan(".:53 {\n  cache 60 example.org {\n    success 2048 120 10\n    denial 1024 30\n    prefetch 5 2m 20%\n    serve_stale 1h verify 0s 30s\n    servfail 2s\n    disable denial sub.example.org\n    keepttl\n  }\n}\n").unwrap();
        let c = plan.blocks[0].cache.clone().unwrap();
        assert_eq!(c.zones, [name("example.org.")]);
        assert_eq!(
            (c.success.capacity, c.success.max_ttl, c.success.min_ttl),
            (2048, 120, 10)
        );
        assert_eq!(
            (c.denial.capacity, c.denial.max_ttl, c.denial.min_ttl),
            (1024, 30, 5)
        );
        assert_eq!(
            c.prefetch,
            Some(cache::Prefetch {
                amount: 5,
                window: Duration::from_secs(120),
                percentage: 20
            })
        );
        assert_eq!(
            c.serve_stale,
            Some(cache::ServeStale {
                up_to: Duration::from_secs(3600),
                verify: true,
                verify_timeout: Duration::ZERO,
                response_ttl: 30
            })
        );
        assert_eq!(c.servfail, Duration::from_secs(2));
        assert_eq!(c.no_denial, [name("sub.example.org.")]);
        assert!(c.keepttl);
        refuses_each(&[
            ("cache 0", "the TTL must be positive"),
            ("cache {\n    prefetch 2 1m 5%\n  }", "between 10% and 90%"),
            ("cache {\n    servfail 10m\n  }", "over 5 minutes"),
            ("cache {\n    disable everything\n  }", "success or denial"),
            (
                "cache {\n    serve_stale 1h sometimes\n  }",
                "immediate or verify",
            ),
            ("cache {\n    shards 4\n  }", "not an option of cache"),
        ]);
    }

    #[test]
    fn reload_and_prometheus_take_coredns_defaults_and_limits() {
        let plan = plan(".:53 {\n  reload 10s\n  prometheus\n}\n").unwrap();
        assert_eq!(
            plan.reload,
            Some(Reload {
                interval: Duration::from_secs(10),
                jitter: Duration::from_secs(5)
            })
        );
        assert_eq!(plan.prometheus, Some("127.0.0.1:9153".parse().unwrap()));
        assert!(refusal(".:53 {\n  reload 1s\n}\n").contains("at least 2s"));
        assert!(refusal(".:53 {\n  reload 10s 500ms\n}\n").contains("0 or at least 1s"));
        assert!(refusal(".:53 {\n  loadbalance weighted /w\n}\n").contains("round_robin"));
    }

    #[test]
    fn log_and_errors_take_coredns_options_and_refuse_the_rest() {
        let plan = plan(".:53 {\n  log example.org example.net \"{name} {rcode}\" {\n    class denial error\n  }\n  log\n  errors stdout {\n    consolidate 5m \".* i/o timeout$\" warning show_first\n  }\n}\n").unwrap();
        let rules = &plan.blocks[0].log;
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].scope, name("example.org."));
        assert_eq!(rules[1].format, "{name} {rcode}");
        assert_eq!(
            rules[1].classes,
            [crate::log::Class::Denial, crate::log::Class::Error]
        );
        assert_eq!(
            (rules[2].scope.clone(), rules[2].format.as_str()),
            (Name::root(), crate::log::COMMON)
        );
        let errors = plan.blocks[0].errors.clone().unwrap();
        let rule = &errors.consolidate[0];
        assert_eq!(rule.period, Duration::from_secs(300));
        assert_eq!(rule.level, crate::errors::Level::Warning);
        assert!(rule.show_first);
        refuses_each(&[
            ("log {\n    class sometimes\n  }", "not a class"),
            ("errors {\n    stacktrace\n  }", "ends on a panic"),
            (
                "errors {\n    consolidate 1s (\n  }",
                "not a regular expression",
            ),
            (
                "errors {\n    consolidate 1s x show_first error\n  }",
                "before show_first",
            ),
            ("errors /var/log/x", "only place to write is stdout"),
        ]);
    }

    #[test]
    fn rewrite_rules_read_as_coredns_reads_them() {
        use crate::rewrite::{Match, ResponseRule};
        let plan = plan(".:53 {\n  rewrite continue name prefix API- web-\n  rewrite name regex (.*)\\.corp\\.$ {1}.svc.cluster.local answer name (.*)\\.svc\\.cluster\\.local\\.$ {1}.corp\n  rewrite name a.example b.example\n}\n").unwrap();
        let rules = &plan.blocks[0].rewrite;
        assert_eq!(rules.len(), 3);
        // FROM and TO made lower-case and fully qualified, as CoreDNS's Normalize does.
        assert_eq!(rules[0].matcher, Match::Prefix("api-.".into()));
        assert_eq!(rules[0].to, "web-.");
        assert!(rules[0].continues && !rules[1].continues);
        assert!(matches!(rules[1].matcher, Match::Regex(_)));
        assert_eq!(rules[1].to, "{1}.svc.cluster.local.");
        assert!(matches!(rules[1].answers[0], ResponseRule::Name(_)));
        assert_eq!(rules[2].matcher, Match::Exact("a.example.".into()));
        refuses_each(&[
            ("rewrite type A AAAA", "type rules are not supported yet"),
            ("rewrite name regex ( x", "not a regular expression"),
            (
                "rewrite name exact a b answer sometimes",
                "is auto, name or value",
            ),
        ]);
    }

    #[test]
    fn overrides_move_every_listener_and_http_endpoint() {
        let plan = plan(".:53 {\n  bind 10.0.0.1 10.0.0.2\n  health :8080\n  ready 127.0.0.1:8181\n  prometheus :9153\n}\ncorp.example:5353 {\n  forward . 10.0.0.53\n}\n").unwrap();
        let (kept, listen) = plan.clone().with_overrides(Overrides::default());
        assert_eq!(
            listen,
            [
                vec![
                    "10.0.0.1:53".parse().unwrap(),
                    "10.0.0.2:53".parse().unwrap()
                ],
                vec!["0.0.0.0:5353".parse().unwrap()]
            ]
        );
        assert_eq!(kept.ready, Some("127.0.0.1:8181".parse().unwrap()));
        let (moved, listen) = plan.with_overrides(Overrides {
            dns_port: Some(1053),
            bind: Some("127.0.0.1".parse().unwrap()),
            health_port: Some(18080),
            ready_port: None,
            metrics_port: Some(19153),
        });
        assert_eq!(
            listen,
            [
                vec!["127.0.0.1:1053".parse().unwrap()],
                vec!["127.0.0.1:1053".parse().unwrap()]
            ]
        );
        assert_eq!(
            moved.health.unwrap().addr,
            "127.0.0.1:18080".parse().unwrap()
        );
        assert_eq!(moved.ready, Some("127.0.0.1:8181".parse().unwrap()));
        assert_eq!(moved.prometheus, Some("127.0.0.1:19153".parse().unwrap()));
    }

    #[test]
    fn the_kubernetes_directive_becomes_answering_options() {
        let plan = plan(".:53 {\n  kubernetes cluster.local in-addr.arpa {\n    ttl 30\n    pods insecure\n    fallthrough\n    namespaces a\n  }\n}\n").unwrap();
        let config = plan
            .kubernetes
            .unwrap()
            .config(vec!["10.0.0.10".parse().unwrap()])
            .unwrap();
        assert_eq!(config.ttl, 30);
        assert_eq!(config.pods, PodsMode::Insecure);
        assert_eq!(
            config.fallthrough,
            [name("cluster.local."), name("in-addr.arpa.")]
        );
        assert_eq!(config.namespaces, Some(["a".to_string()].into()));
        assert_eq!(
            config.ns_addresses,
            ["10.0.0.10".parse::<IpAddr>().unwrap()]
        );
    }
}
