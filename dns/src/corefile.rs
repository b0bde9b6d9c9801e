//! The Corefile: CoreDNS's configuration text (Caddy's syntax), read into server blocks whose
//! keys (zones and ports, reverse zones given as CIDRs) are normalised and whose directives keep
//! their arguments, nested lines and line numbers. What a directive means is the command's
//! business; this module only knows the shape, so every error names the file and the line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::rr::Name;
use ipnet::IpNet;

use crate::config::PodsMode;
use crate::error::Error;
use crate::forward::{Forward, MAX_UPSTREAMS, Policy};

/// A parsed Corefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corefile {
    pub blocks: Vec<ServerBlock>,
}

/// One server block: the zones and ports it serves, and its directives in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBlock {
    pub keys: Vec<ServerKey>,
    pub directives: Vec<Directive>,
    /// Line of the block's first key.
    pub line: usize,
}

/// A zone served on a port (`cluster.local:53`; a CIDR key gives one per reverse zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKey {
    /// Lower-case and fully qualified; `.` for the root.
    pub zone: Name,
    pub port: u16,
}

/// A directive line, with the lines of its `{ }` block if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Vec<Directive>,
    pub line: usize,
}

/// The port a key without one is served on.
pub const DEFAULT_PORT: u16 = 53;

/// A token and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    line: usize,
    /// Quoted: never a brace or a comment.
    quoted: bool,
}

/// Reads `text` (from `file`, for messages). `env` looks up `{$NAME}` and `{%NAME%}`
/// placeholders, which are replaced before anything else, as in CoreDNS.
pub fn parse(
    text: &str,
    file: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Corefile, Error> {
    let fail = |line: usize, message: String| Error::Corefile {
        file: file.to_string(),
        line,
        message,
    };
    let text = substitute(text, &env);
    let tokens = tokenize(&text).map_err(|(line, m)| fail(line, m))?;
    let lines = group_lines(&tokens);
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let (keys_line, rest) = (&lines[i], i + 1);
        let line = keys_line[0].line;
        let first = &keys_line[0];
        if !first.quoted && first.text.starts_with('(') {
            return Err(fail(
                line,
                format!(
                    "snippet {} is not supported; write its directives into each server block",
                    first.text
                ),
            ));
        }
        if !first.quoted && first.text == "import" {
            return Err(fail(
                line,
                "import is not supported; write the directives into the Corefile".into(),
            ));
        }
        let Some((last, key_tokens)) = keys_line.split_last() else {
            unreachable!("lines are never empty");
        };
        if last.quoted || last.text != "{" {
            return Err(fail(
                line,
                format!(
                    "expected a server block: keys such as `.:53` followed by `{{` on the same line, found {:?}",
                    join(keys_line)
                ),
            ));
        }
        if key_tokens.is_empty() {
            return Err(fail(
                line,
                "a server block needs at least one key, e.g. `.:53 {`".into(),
            ));
        }
        let mut keys = Vec::new();
        for token in key_tokens {
            for key in token.text.split(',').filter(|k| !k.is_empty()) {
                keys.extend(parse_key(key).map_err(|m| fail(token.line, m))?);
            }
        }
        let (directives, next) = parse_body(&lines, rest, line).map_err(|(l, m)| fail(l, m))?;
        blocks.push(ServerBlock {
            keys,
            directives,
            line,
        });
        i = next;
    }
    if blocks.is_empty() {
        return Err(fail(
            0,
            "no server block; e.g. `.:53 { kubernetes cluster.local }`".into(),
        ));
    }
    Ok(Corefile { blocks })
}

/// Directive lines from `lines[at]` to the `}` closing the block opened on `opened`; the
/// directives and the index after the `}`.
fn parse_body(
    lines: &[Vec<Token>],
    mut at: usize,
    opened: usize,
) -> Result<(Vec<Directive>, usize), (usize, String)> {
    let mut directives = Vec::new();
    while at < lines.len() {
        let line = &lines[at];
        let first = &line[0];
        if !first.quoted && first.text == "}" {
            if line.len() > 1 {
                return Err((
                    first.line,
                    format!("unexpected {:?} after `}}`", join(&line[1..])),
                ));
            }
            return Ok((directives, at + 1));
        }
        if !first.quoted && first.text == "{" {
            return Err((
                first.line,
                "`{` must end the line of the directive it opens".into(),
            ));
        }
        if !first.quoted && first.text == "import" {
            return Err((
                first.line,
                "import is not supported; write the directives into the Corefile".into(),
            ));
        }
        let opens = line.len() > 1 && line.last().is_some_and(|t| !t.quoted && t.text == "{");
        let words = if opens {
            &line[..line.len() - 1]
        } else {
            &line[..]
        };
        if let Some(brace) = words
            .iter()
            .find(|t| !t.quoted && (t.text == "{" || t.text == "}"))
        {
            return Err((
                brace.line,
                format!("unexpected `{}` in the middle of a line", brace.text),
            ));
        }
        let (block, next) = if opens {
            parse_body(lines, at + 1, first.line)?
        } else {
            (Vec::new(), at + 1)
        };
        directives.push(Directive {
            name: first.text.clone(),
            args: words[1..].iter().map(|t| t.text.clone()).collect(),
            block,
            line: first.line,
        });
        at = next;
    }
    Err((opened, "this block is never closed with `}`".into()))
}

/// `[dns://]host[:port]`, host being `.`, a domain or a CIDR.
fn parse_key(key: &str) -> Result<Vec<ServerKey>, String> {
    let rest = match key.split_once("://") {
        Some(("dns", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{key}: {scheme}:// servers are not supported; serve plain DNS (dns:// or no scheme)"
            ));
        }
        None => key,
    };
    // A CIDR key of IPv6 has colons of its own: the port, if any, follows the prefix length.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && port.chars().all(|c| c.is_ascii_digit())
                && (!host.contains(':') || host.contains('/')) =>
        {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{key}: {port} is not a port (1-65535)"))?;
            (host, port)
        }
        _ => (rest, DEFAULT_PORT),
    };
    if host.contains('/') {
        let net: IpNet = host
            .parse()
            .map_err(|e| format!("{key}: {host} is not a CIDR ({e})"))?;
        return reverse_zones(net)
            .map_err(|m| format!("{key}: {m}"))
            .map(|zones| {
                zones
                    .into_iter()
                    .map(|zone| ServerKey { zone, port })
                    .collect()
            });
    }
    let fqdn = if host.ends_with('.') {
        host.to_ascii_lowercase()
    } else {
        format!("{}.", host.to_ascii_lowercase())
    };
    let zone = Name::from_ascii(&fqdn).map_err(|e| format!("{key}: {host} is not a zone ({e})"))?;
    Ok(vec![ServerKey { zone, port }])
}

/// The reverse zones of `net`: whole octets (IPv4) or nibbles (IPv6), a prefix between them
/// standing for every zone one boundary down (at most 128), as CoreDNS splits it.
pub fn reverse_zones(net: IpNet) -> Result<Vec<Name>, String> {
    let net = net.trunc();
    let unit = match net {
        IpNet::V4(_) => 8u8,
        IpNet::V6(_) => 4u8,
    };
    let len = net.prefix_len();
    let aligned = len.div_ceil(unit) * unit;
    let subnets: Vec<IpNet> = if aligned == len {
        vec![net]
    } else {
        net.subnets(aligned).map_err(|e| e.to_string())?.collect()
    };
    subnets
        .into_iter()
        .map(|n| {
            let labels = reverse_labels(n.network(), n.prefix_len() / unit);
            Name::from_ascii(labels).map_err(|e| e.to_string())
        })
        .collect()
}

/// The reverse name of the first `keep` octets or nibbles of `ip`, e.g. `0.96.10.in-addr.arpa.`.
fn reverse_labels(ip: IpAddr, keep: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut parts: Vec<String> = v4.octets()[..usize::from(keep)]
                .iter()
                .map(u8::to_string)
                .collect();
            parts.reverse();
            parts.push("in-addr.arpa.".into());
            parts.join(".")
        }
        IpAddr::V6(v6) => {
            let nibbles: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0x0f])
                .take(usize::from(keep))
                .map(|n| format!("{n:x}"))
                .collect();
            let mut parts = nibbles;
            parts.reverse();
            parts.push("ip6.arpa.".into());
            parts.join(".")
        }
    }
}

/// Replaces `{$NAME}` and `{%NAME%}` with the variable's value (empty when unset).
fn substitute(text: &str, env: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let found = [("{$", "}"), ("{%", "%}")]
            .iter()
            .find_map(|(open, close)| {
                let inner = tail.strip_prefix(open)?;
                let end = inner.find(close)?;
                let name = &inner[..end];
                (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    .then(|| (name.to_string(), open.len() + end + close.len()))
            });
        match found {
            Some((name, used)) => {
                out.push_str(&env(&name).unwrap_or_default());
                rest = &tail[used..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Words, quoted strings and braces, with their lines; `#` comments dropped.
fn tokenize(text: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '"' => {
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err((start, "a quoted string is never closed".into())),
                        Some('\\') if chars.peek() == Some(&'"') => {
                            word.push('"');
                            chars.next();
                        }
                        Some('"') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            word.push(c);
                        }
                    }
                }
                tokens.push(Token {
                    text: word,
                    line: start,
                    quoted: true,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '"' || (c == '#' && word.is_empty()) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token {
                    text: word,
                    line,
                    quoted: false,
                });
            }
        }
    }
    Ok(tokens)
}

/// Tokens grouped by line; a line ends after a `{` (a `}` closes a block only at the start of
/// a line).
fn group_lines(tokens: &[Token]) -> Vec<Vec<Token>> {
    let mut lines: Vec<Vec<Token>> = Vec::new();
    for token in tokens {
        let same_line = lines
            .last()
            .and_then(|l| l.last())
            .is_some_and(|last| last.line == token.line && (last.text != "{" || last.quoted));
        if same_line {
            lines.last_mut().expect("a line").push(token.clone());
        } else {
            lines.push(vec![token.clone()]);
        }
    }
    lines
}

fn join(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one Corefile asks of `svcplane dns` today: one server block on one port, answering
/// from a `kubernetes` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub port: u16,
    pub kubernetes: Kubernetes,
    /// `health [ADDR] { lameduck D }`: liveness on `/health`, and how long DNS keeps answering
    /// after a SIGTERM.
    pub health: Option<Health>,
    /// `ready [ADDR]`: readiness on `/ready`.
    pub ready: Option<SocketAddr>,
    /// `forward FROM TO...`: where names the cluster zones do not answer go.
    pub forward: Option<Forward>,
    /// `log`: a line per query on stdout, in CoreDNS's common log format.
    pub log: bool,
}

/// The `health` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub addr: SocketAddr,
    pub lameduck: Duration,
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
    /// svcplane's own: serve these manifest files or directories instead of watching a cluster.
    pub manifests: Vec<PathBuf>,
    pub startup_timeout: Option<Duration>,
}

/// Directives `svcplane dns` runs. The rest of CoreDNS's are refused by name, not ignored.
pub const SUPPORTED: &[&str] = &["kubernetes", "forward", "health", "ready", "log"];

/// What to use instead of a CoreDNS directive svcplane will not have.
fn instead_of(directive: &str) -> Option<&'static str> {
    Some(match directive {
        "autopath" => "pods resolve search-path names themselves (ndots), as with kube-dns",
        "template" => "answer such names from a real zone behind `forward`",
        "k8s_external" => "publish external addresses through an external DNS and `forward` to it",
        _ => return None,
    })
}

impl Corefile {
    /// The one server this Corefile describes, or why `svcplane dns` cannot run it (yet).
    /// `resolv_conf` reads the nameservers of a resolv.conf a `forward` names.
    pub fn server(
        &self,
        file: &str,
        resolv_conf: &dyn Fn(&str) -> Result<Vec<SocketAddr>, String>,
    ) -> Result<Server, Error> {
        let fail = |line: usize, message: String| Error::Corefile {
            file: file.to_string(),
            line,
            message,
        };
        let [block] = self.blocks.as_slice() else {
            return Err(fail(
                self.blocks[1].line,
                "several server blocks are not supported yet; put every zone in one block".into(),
            ));
        };
        let port = block.keys[0].port;
        if let Some(other) = block.keys.iter().find(|k| k.port != port) {
            return Err(fail(
                block.line,
                format!(
                    "keys on several ports ({port} and {}) are not supported yet",
                    other.port
                ),
            ));
        }
        let mut kubernetes = None;
        let (mut health, mut ready, mut forward) = (None, None, None);
        let mut log = false;
        for d in &block.directives {
            let once = |seen: bool| {
                if seen {
                    Err(fail(
                        d.line,
                        format!("{}: only one per server block", d.name),
                    ))
                } else {
                    Ok(())
                }
            };
            match d.name.as_str() {
                "health" => {
                    once(health.is_some())?;
                    health = Some(self::health(d).map_err(|(l, m)| fail(l, m))?);
                }
                "log" => {
                    once(log)?;
                    if !d.args.is_empty() || !d.block.is_empty() {
                        return Err(fail(
                            d.line,
                            "log: names and formats are not supported yet; write a bare `log` (every query, common format)".into(),
                        ));
                    }
                    log = true;
                }
                "forward" => {
                    once(forward.is_some())?;
                    forward = Some(self::forward(d, resolv_conf).map_err(|(l, m)| fail(l, m))?);
                }
                "ready" => {
                    once(ready.is_some())?;
                    ready = Some(http_address(d, ":8181").map_err(|m| fail(d.line, m))?);
                }
                "kubernetes" if kubernetes.is_some() => {
                    return Err(fail(d.line, "kubernetes: only one per server block".into()));
                }
                "kubernetes" => {
                    kubernetes = Some(self::kubernetes(d, block).map_err(|(l, m)| fail(l, m))?)
                }
                other => {
                    let why = match instead_of(other) {
                        Some(instead) => format!("{other} is not supported: {instead}"),
                        None => format!("{other} is not supported yet"),
                    };
                    return Err(fail(
                        d.line,
                        format!("{why} (supported: {})", SUPPORTED.join(", ")),
                    ));
                }
            }
        }
        let Some(kubernetes) = kubernetes else {
            return Err(fail(
                block.line,
                "no kubernetes directive: nothing to answer from".into(),
            ));
        };
        Ok(Server {
            port,
            kubernetes,
            health,
            ready,
            forward,
            log,
        })
    }
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
        None => text.to_string(),
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
) -> Result<Forward, (usize, String)> {
    let at = |line: usize| move |m: String| (line, format!("forward: {m}"));
    let [from, to @ ..] = d.args.as_slice() else {
        return Err((
            d.line,
            "forward: needs the zone and at least one upstream, e.g. `forward . /etc/resolv.conf`"
                .into(),
        ));
    };
    if to.is_empty() {
        return Err((d.line, "forward: needs at least one upstream".into()));
    }
    let zone = |text: &str| -> Result<Name, String> {
        let fqdn = if text.ends_with('.') {
            text.to_ascii_lowercase()
        } else {
            format!("{}.", text.to_ascii_lowercase())
        };
        Name::from_ascii(&fqdn).map_err(|e| format!("{text} is not a zone ({e})"))
    };
    let from = zone(from).map_err(at(d.line))?;
    let mut upstreams = Vec::new();
    for target in to {
        if target.contains('/') && !target.contains("://") {
            upstreams.extend(resolv_conf(target).map_err(at(d.line))?);
            continue;
        }
        let addr = match target.split_once("://") {
            Some(("dns", rest)) => rest,
            Some((scheme, _)) => {
                return Err((
                    d.line,
                    format!("forward: {scheme}:// upstreams are not supported yet; use dns://"),
                ));
            }
            None => target.as_str(),
        };
        let parsed = addr
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| {
                let bare = addr.trim_start_matches('[').trim_end_matches(']');
                bare.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .ok_or_else(|| {
                (
                    d.line,
                    format!("forward: {target} is not an upstream address or a resolv.conf file"),
                )
            })?;
        upstreams.push(parsed);
    }
    if upstreams.is_empty() {
        return Err((
            d.line,
            "forward: no upstream (the resolv.conf names no nameserver)".into(),
        ));
    }
    if upstreams.len() > MAX_UPSTREAMS {
        return Err((
            d.line,
            format!(
                "forward: {} upstreams; at most {MAX_UPSTREAMS}",
                upstreams.len()
            ),
        ));
    }
    let mut forward = Forward {
        from,
        ..Forward::everything_to(upstreams)
    };
    for option in &d.block {
        let fail = |m: &str| (option.line, format!("forward {}: {m}", option.name));
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
            ("policy" | "max_concurrent" | "except", _) => return Err(fail("takes one value")),
            ("force_tcp" | "prefer_udp", _) => return Err(fail("takes no value")),
            (other, _) => {
                return Err((
                    option.line,
                    format!(
                        "forward {other} is not supported yet (supported: policy, max_concurrent, force_tcp, prefer_udp, except)"
                    ),
                ));
            }
        }
    }
    if forward.force_tcp && forward.prefer_udp {
        return Err((
            d.line,
            "forward: force_tcp and prefer_udp exclude each other".into(),
        ));
    }
    Ok(forward)
}

/// `health [ADDR] { lameduck D }`.
fn health(d: &Directive) -> Result<Health, (usize, String)> {
    let addr = http_address(d, ":8080").map_err(|m| (d.line, m))?;
    let mut lameduck = Duration::ZERO;
    for option in &d.block {
        match (option.name.as_str(), option.args.as_slice()) {
            ("lameduck", [value]) => {
                lameduck = go_duration(value)
                    .map_err(|m| (option.line, format!("health lameduck: {m}")))?
            }
            ("lameduck", _) => {
                return Err((option.line, "health lameduck: takes one duration".into()));
            }
            (other, _) => {
                return Err((
                    option.line,
                    format!("health: {other} is not an option of health (lameduck)"),
                ));
            }
        }
    }
    Ok(Health { addr, lameduck })
}

/// The `kubernetes` directive of `block`, or the line and what is wrong there.
fn kubernetes(d: &Directive, block: &ServerBlock) -> Result<Kubernetes, (usize, String)> {
    let zone = |text: &str| -> Result<Name, (usize, String)> {
        let fqdn = if text.ends_with('.') {
            text.to_ascii_lowercase()
        } else {
            format!("{}.", text.to_ascii_lowercase())
        };
        Name::from_ascii(&fqdn)
            .map_err(|e| (d.line, format!("kubernetes: {text} is not a zone ({e})")))
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
        let at = |m: String| (option.line, format!("kubernetes {}: {m}", option.name));
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
                [_, _] => {
                    return Err(at(
                        "a context is not supported yet; use the kubeconfig's current context"
                            .into(),
                    ));
                }
                _ => return Err(at("takes the kubeconfig's path".into())),
            },
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
                    "{other} is not supported yet (supported: ttl, pods, endpoint_pod_names, noendpoints, ignore empty_service, namespaces, fallthrough, kubeconfig, manifests, startup_timeout)"
                )));
            }
        }
    }
    if k.kubeconfig.is_some() && !k.manifests.is_empty() {
        return Err((
            d.line,
            "kubernetes: kubeconfig and manifests exclude each other".into(),
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

    const KUBEADM: &str = r#".:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
"#;

    fn no_resolv(path: &str) -> Result<Vec<SocketAddr>, String> {
        match path {
            "/etc/resolv.conf" => Ok(vec!["10.0.0.2:53".parse().unwrap()]),
            _ => Err(format!("{path}: cannot read it")),
        }
    }

    /// Why a Corefile of `text` does not run.
    fn refusal(text: &str) -> String {
        read(text)
            .unwrap()
            .server("Corefile", &no_resolv)
            .unwrap_err()
            .to_string()
    }

    fn read(text: &str) -> Result<Corefile, Error> {
        parse(text, "Corefile", |_| None)
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    #[test]
    fn kubeadms_corefile_reads_as_one_block_of_directives_with_their_blocks() {
        let corefile = read(KUBEADM).unwrap();
        assert_eq!(corefile.blocks.len(), 1);
        let block = &corefile.blocks[0];
        assert_eq!(
            block.keys,
            [ServerKey {
                zone: name("."),
                port: 53
            }]
        );
        let names: Vec<&str> = block.directives.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "errors",
                "health",
                "ready",
                "kubernetes",
                "prometheus",
                "forward",
                "cache",
                "loop",
                "reload",
                "loadbalance"
            ]
        );
        let kubernetes = &block.directives[3];
        assert_eq!(
            kubernetes.args,
            ["cluster.local", "in-addr.arpa", "ip6.arpa"]
        );
        assert_eq!(kubernetes.line, 7);
        assert_eq!(kubernetes.block.len(), 3);
        assert_eq!(kubernetes.block[1].name, "fallthrough");
        assert_eq!(kubernetes.block[1].args, ["in-addr.arpa", "ip6.arpa"]);
        assert_eq!(kubernetes.block[1].line, 9);
        let cache = &block.directives[6];
        assert_eq!(cache.args, ["30"]);
        assert_eq!(cache.block[0].args, ["success", "cluster.local"]);
        assert_eq!(block.directives[9].line, 22);
    }

    #[test]
    fn keys_take_ports_schemes_commas_and_reverse_cidrs() {
        let corefile =
            read("cluster.local:1053, dns://example.org {\n  errors\n}\n10.96.0.0/16:53 {\n  errors\n}\n")
                .unwrap();
        assert_eq!(
            corefile.blocks[0].keys,
            [
                ServerKey {
                    zone: name("cluster.local."),
                    port: 1053
                },
                ServerKey {
                    zone: name("example.org."),
                    port: 53
                },
            ]
        );
        assert_eq!(
            corefile.blocks[1].keys,
            [ServerKey {
                zone: name("96.10.in-addr.arpa."),
                port: 53
            }]
        );
        assert_eq!(corefile.blocks[1].line, 4);
    }

    #[test]
    fn a_cidr_between_boundaries_stands_for_every_zone_one_boundary_down() {
        let zones = reverse_zones("10.0.0.0/23".parse().unwrap()).unwrap();
        assert_eq!(
            zones,
            [name("0.0.10.in-addr.arpa."), name("1.0.10.in-addr.arpa.")]
        );
        let zones = reverse_zones("fd00:10:96::/118".parse().unwrap()).unwrap();
        assert_eq!(zones.len(), 4);
        assert!(
            zones[0]
                .to_ascii()
                .ends_with(".0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."),
            "{}",
            zones[0]
        );
        assert_eq!(
            reverse_zones("10.0.0.0/1".parse().unwrap()).unwrap().len(),
            128
        );
    }

    #[test]
    fn comments_quotes_and_environment_placeholders_are_read_as_coredns_reads_them() {
        let corefile = parse(
            "# the cluster\n.:{$PORT} { # inline\n  log \"a b\" {%WHO%} \"say \\\"hi\\\"\"\n}\n",
            "Corefile",
            |name| match name {
                "PORT" => Some("5300".into()),
                "WHO" => Some("me".into()),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(corefile.blocks[0].keys[0].port, 5300);
        let log = &corefile.blocks[0].directives[0];
        assert_eq!(log.args, ["a b", "me", "say \"hi\""]);
        assert_eq!(log.line, 3);
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let cases: [(&str, usize, &str); 8] = [
            (".:53 {\n  errors\n", 1, "never closed"),
            (".:53\n{\n}\n", 1, "expected a server block"),
            (".:53 {\n  errors }\n}\n", 2, "in the middle of a line"),
            (".:99999 {\n}\n", 1, "not a port"),
            ("tls://.:853 {\n}\n", 1, "tls:// servers are not supported"),
            (
                "(common) {\n  errors\n}\n",
                1,
                "snippet (common) is not supported",
            ),
            (".:53 {\n  import common\n}\n", 2, "import is not supported"),
            (
                ".:53 {\n  log \"open\n}\n",
                2,
                "quoted string is never closed",
            ),
        ];
        for (text, line, needle) in cases {
            let err = read(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("Corefile:{line}: ")),
                "{text:?}: {err}"
            );
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        assert!(
            read("# nothing\n")
                .unwrap_err()
                .to_string()
                .starts_with("Corefile:0: ")
        );
    }

    #[test]
    fn a_kubernetes_block_becomes_the_servers_options() {
        let corefile = read(
            "cluster.local:1053 in-addr.arpa:1053 {\n  kubernetes {\n    pods verified\n    ttl 30\n    endpoint_pod_names\n    noendpoints\n    ignore empty_service\n    namespaces a b\n    fallthrough in-addr.arpa\n    manifests /m.yaml\n    startup_timeout 1m30s\n  }\n}\n",
        )
        .unwrap();
        let server = corefile.server("Corefile", &no_resolv).unwrap();
        assert_eq!(server.port, 1053);
        let k = server.kubernetes;
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
        let err = refusal(KUBEADM);
        assert_eq!(
            err,
            "Corefile:2: errors is not supported yet (supported: kubernetes, forward, health, ready, log)"
        );
        let err = refusal(".:53 {\n  kubernetes\n  autopath @kubernetes\n}\n");
        assert!(
            err.starts_with("Corefile:3: autopath is not supported: pods resolve"),
            "{err}"
        );
        let err = refusal(".:53 {\n  kubernetes {\n    ttl 4000\n  }\n}\n");
        assert_eq!(err, "Corefile:3: kubernetes ttl: 4000 is above 3600");
        let err = refusal(".:53 {\n  errors\n}\n.:54 {\n  errors\n}\n");
        assert!(
            err.starts_with("Corefile:4: several server blocks"),
            "{err}"
        );
    }

    #[test]
    fn health_and_ready_take_addresses_and_a_lameduck() {
        let server = read(
            ".:53 {\n  health {\n    lameduck 5s\n  }\n  ready 127.0.0.1:9181\n  kubernetes\n}\n",
        )
        .unwrap()
        .server("Corefile", &no_resolv)
        .unwrap();
        assert_eq!(
            server.health,
            Some(Health {
                addr: "0.0.0.0:8080".parse().unwrap(),
                lameduck: Duration::from_secs(5)
            })
        );
        assert_eq!(server.ready, Some("127.0.0.1:9181".parse().unwrap()));
        let err = refusal(".:53 {\n  kubernetes\n  ready\n  ready\n}\n");
        assert_eq!(err, "Corefile:4: ready: only one per server block");
        let err = refusal(".:53 {\n  kubernetes\n  health {\n    lameduck soon\n  }\n}\n");
        assert!(
            err.starts_with("Corefile:4: health lameduck: \"soon\" is not a duration"),
            "{err}"
        );
    }

    #[test]
    fn forward_takes_addresses_resolv_conf_and_its_options() {
        let server = read(".:53 {\n  kubernetes cluster.local\n  forward . dns://127.0.0.1:5300 /etc/resolv.conf [::1] {\n    policy sequential\n    max_concurrent 1000\n    except example.com\n  }\n}\n")
            .unwrap()
            .server("Corefile", &no_resolv)
            .unwrap();
        let f = server.forward.unwrap();
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
        let err =
            refusal(".:53 {\n  kubernetes\n  forward . 10.0.0.1 {\n    health_check 1s\n  }\n}\n");
        assert!(
            err.starts_with("Corefile:4: forward health_check is not supported yet"),
            "{err}"
        );
        let err = refusal(".:53 {\n  kubernetes\n  forward . /nowhere\n}\n");
        assert_eq!(err, "Corefile:3: forward: /nowhere: cannot read it");
    }
}
