//! The Corefile: CoreDNS's configuration text (Caddy's syntax), read into server blocks whose
//! keys (zones and ports, reverse zones given as CIDRs) are normalised and whose directives keep
//! their arguments, nested lines and the file and line they are written on. Snippets and
//! `import` (files and wildcards, read through [`read`]) are expanded where they stand. What a
//! directive means is the plan's business; this module knows the shape, so every error names
//! the file and the line.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::Name;
use ipnet::IpNet;

use crate::error::Error;

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
    /// The file it is written in (an imported file's own name).
    pub file: Arc<str>,
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
    /// The file it is written in (an imported file's own name).
    pub file: Arc<str>,
}

/// Where something is written: a file and a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<str>,
    pub line: usize,
}

impl ServerBlock {
    pub fn at(&self) -> Loc {
        Loc {
            file: self.file.clone(),
            line: self.line,
        }
    }
}

impl Directive {
    pub fn at(&self) -> Loc {
        Loc {
            file: self.file.clone(),
            line: self.line,
        }
    }
}

/// The port a key without one is served on.
pub const DEFAULT_PORT: u16 = 53;

/// A token, the file and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    file: Arc<str>,
    line: usize,
    /// Quoted: never a brace or a comment.
    quoted: bool,
}

/// Where a parse failed: the file, the line, why.
type Failure = (Arc<str>, usize, String);

/// The files an `import` in the file named second names first: each matching file's name and
/// text, in name order (none for a glob that matches nothing), or why they cannot be read.
pub type Includes<'a> = &'a dyn Fn(&str, &str) -> Result<Vec<(String, String)>, String>;

/// How deep imports may nest (a file importing itself is refused when it gets there).
const MAX_IMPORT_DEPTH: usize = 10;

/// Reads `text` (from `file`, for messages). `env` looks up `{$NAME}` and `{%NAME%}`
/// placeholders, which are replaced before anything else, as in CoreDNS. An `import` of a file
/// is refused (see [`parse_with`]); snippets work.
pub fn parse(
    text: &str,
    file: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Corefile, Error> {
    parse_with(text, file, &env, &|pattern, _| {
        Err(format!("cannot import {pattern}: no files here"))
    })
}

/// [`parse`], with `include` reading the files an `import` names. Snippets (`(name) { ... }`
/// at the top level) and `import` of a snippet or of files (a glob matching nothing imports
/// nothing) are expanded where they stand, as Caddy does.
pub fn parse_with(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    include: Includes<'_>,
) -> Result<Corefile, Error> {
    let failed = |(file, line, message): Failure| Error::Corefile {
        file: file.to_string(),
        line,
        message,
    };
    let name: Arc<str> = Arc::from(file);
    let lines = read_lines(text, &name, env).map_err(failed)?;
    let mut snippets = BTreeMap::new();
    let lines = expand(lines, &mut snippets, env, include, 0).map_err(failed)?;
    let fail = |token: &Token, message: String| Error::Corefile {
        file: token.file.to_string(),
        line: token.line,
        message,
    };
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let (keys_line, rest) = (&lines[i], i + 1);
        let first = &keys_line[0];
        let line = first.line;
        let Some((last, key_tokens)) = keys_line.split_last() else {
            unreachable!("lines are never empty");
        };
        if last.quoted || last.text != "{" {
            return Err(fail(
                first,
                format!(
                    "expected a server block: keys such as `.:53` followed by `{{` on the same line, found {:?}",
                    join(keys_line)
                ),
            ));
        }
        if key_tokens.is_empty() {
            return Err(fail(
                first,
                "a server block needs at least one key, e.g. `.:53 {`".into(),
            ));
        }
        let mut keys = Vec::new();
        for token in key_tokens {
            for key in token.text.split(',').filter(|k| !k.is_empty()) {
                keys.extend(parse_key(key).map_err(|m| fail(token, m))?);
            }
        }
        // Commas alone name no zone (found by the corefile fuzz target).
        if keys.is_empty() {
            return Err(fail(
                first,
                format!(
                    "a server block needs at least one key, e.g. `.:53 {{`; {:?} names none",
                    join(key_tokens)
                ),
            ));
        }
        let (directives, next) = parse_body(&lines, rest, first).map_err(failed)?;
        blocks.push(ServerBlock {
            keys,
            directives,
            line,
            file: first.file.clone(),
        });
        i = next;
    }
    if blocks.is_empty() {
        return Err(Error::Corefile {
            file: file.to_string(),
            line: 0,
            message: "no server block; e.g. `.:53 { kubernetes cluster.local }`".into(),
        });
    }
    Ok(Corefile { blocks })
}

/// Reads the Corefile at `path` with its imports from the file system: a relative pattern is
/// taken from the folder of the file holding the `import`, as Caddy takes it, and `*`, `?` and
/// `[...]` may stand in the file name.
pub fn read(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Corefile, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Corefile {
        file: shown.clone(),
        line: 0,
        message: format!("cannot read it ({e})"),
    })?;
    parse_with(&text, &shown, env, &|pattern, from| {
        files(Path::new(from).parent().unwrap_or(Path::new("")), pattern)
    })
}

/// The files `pattern` names (relative to `base`), sorted; a pattern with wildcards may match
/// none, a plain path must exist.
fn files(base: &Path, pattern: &str) -> Result<Vec<(String, String)>, String> {
    let full = base.join(pattern);
    let (dir, name) = match (full.parent(), full.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => (dir.to_path_buf(), name.to_string()),
        _ => return Err("not a file pattern".into()),
    };
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|text| (path.display().to_string(), text))
            .map_err(|e| format!("cannot read {} ({e})", path.display()))
    };
    if !name.contains(['*', '?', '[']) {
        return Ok(vec![read(&full)?]);
    }
    if dir.to_string_lossy().contains(['*', '?', '[']) {
        return Err("wildcards may stand in the file name only".into());
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        // The folder of an optional ConfigMap may be missing: nothing to import.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {} ({e})", dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| wildcard(&name, n))
        })
        .collect();
    paths.sort();
    paths.iter().map(|p| read(p)).collect()
}

/// Whether `text` matches the shell pattern `pattern` (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`).
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    fn at(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| at(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && at(&p[1..], &t[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|c| *c == ']') else {
                    return !t.is_empty() && t[0] == '[' && at(&p[1..], &t[1..]);
                };
                let Some(&c) = t.first() else { return false };
                let (negated, set) = match p.get(1) {
                    Some('!') | Some('^') => (true, &p[2..end]),
                    _ => (false, &p[1..end]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negated && at(&p[end + 1..], &t[1..])
            }
            Some(&c) => t.first() == Some(&c) && at(&p[1..], &t[1..]),
        }
    }
    at(&p, &t)
}

/// The lines of one file's `text`, placeholders replaced.
fn read_lines(
    text: &str,
    file: &Arc<str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Vec<Token>>, Failure> {
    let text = substitute(text, &env);
    let tokens = tokenize(&text, file).map_err(|(line, m)| (file.clone(), line, m))?;
    Ok(group_lines(&tokens))
}

/// `lines` with snippet definitions taken out (into `snippets`) and every `import` line
/// replaced by what it names, recursively.
fn expand(
    lines: Vec<Vec<Token>>,
    snippets: &mut BTreeMap<String, Vec<Vec<Token>>>,
    env: &dyn Fn(&str) -> Option<String>,
    include: Includes<'_>,
    depth: usize,
) -> Result<Vec<Vec<Token>>, Failure> {
    let at = |t: &Token, m: String| (t.file.clone(), t.line, m);
    let mut out = Vec::new();
    let mut lines = lines.into_iter();
    let mut nesting = 0usize;
    while let Some(line) = lines.next() {
        let first = line[0].clone();
        let opens = line.last().is_some_and(|t| !t.quoted && t.text == "{");
        let closes = !first.quoted && first.text == "}";
        if nesting == 0
            && !first.quoted
            && first.text.starts_with('(')
            && first.text.ends_with(')')
            && opens
            && line.len() == 2
        {
            // A snippet: its lines up to the `}` that closes it.
            let name = first.text[1..first.text.len() - 1].to_string();
            let mut body = Vec::new();
            let mut depth_in = 1usize;
            loop {
                let Some(inner) = lines.next() else {
                    return Err(at(
                        &first,
                        format!("snippet ({name}) is never closed with `}}`"),
                    ));
                };
                let inner_first = &inner[0];
                if !inner_first.quoted && inner_first.text == "}" {
                    depth_in -= 1;
                    if depth_in == 0 {
                        break;
                    }
                }
                if inner.last().is_some_and(|t| !t.quoted && t.text == "{") {
                    depth_in += 1;
                }
                body.push(inner);
            }
            if snippets.insert(name.clone(), body).is_some() {
                // As Caddy: a second snippet of a name is a mistake, not a replacement.
                return Err(at(
                    &first,
                    format!("redeclaration of previously declared snippet {name}"),
                ));
            }
            continue;
        }
        if !first.quoted && first.text == "import" {
            let [_, pattern] = line.as_slice() else {
                return Err(at(
                    &first,
                    "import takes one snippet name or file pattern (arguments to snippets are not supported)".into(),
                ));
            };
            if depth >= MAX_IMPORT_DEPTH {
                return Err(at(
                    &first,
                    format!(
                        "import {}: imports nest too deep (a file importing itself?)",
                        pattern.text
                    ),
                ));
            }
            let imported = match snippets.get(&pattern.text) {
                Some(body) => body.clone(),
                None => {
                    let mut imported = Vec::new();
                    let files = include(&pattern.text, &first.file)
                        .map_err(|m| at(&first, format!("import {}: {m}", pattern.text)))?;
                    for (name, text) in files {
                        imported.extend(read_lines(&text, &Arc::from(name.as_str()), env)?);
                    }
                    imported
                }
            };
            out.extend(expand(imported, snippets, env, include, depth + 1)?);
            continue;
        }
        if closes {
            nesting = nesting.saturating_sub(1);
        }
        if opens {
            nesting += 1;
        }
        out.push(line);
    }
    Ok(out)
}

/// Directive lines from `lines[at]` to the `}` closing the block opened on `opened`; the
/// directives and the index after the `}`.
fn parse_body(
    lines: &[Vec<Token>],
    mut at: usize,
    opened: &Token,
) -> Result<(Vec<Directive>, usize), Failure> {
    let fail = |t: &Token, m: String| (t.file.clone(), t.line, m);
    let mut directives = Vec::new();
    while at < lines.len() {
        let line = &lines[at];
        let first = &line[0];
        if !first.quoted && first.text == "}" {
            if line.len() > 1 {
                return Err(fail(
                    first,
                    format!("unexpected {:?} after `}}`", join(&line[1..])),
                ));
            }
            return Ok((directives, at + 1));
        }
        if !first.quoted && first.text == "{" {
            return Err(fail(
                first,
                "`{` must end the line of the directive it opens".into(),
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
            return Err(fail(
                brace,
                format!("unexpected `{}` in the middle of a line", brace.text),
            ));
        }
        let (block, next) = if opens {
            parse_body(lines, at + 1, first)?
        } else {
            (Vec::new(), at + 1)
        };
        directives.push(Directive {
            name: first.text.clone(),
            args: words[1..].iter().map(|t| t.text.clone()).collect(),
            block,
            line: first.line,
            file: first.file.clone(),
        });
        at = next;
    }
    Err(fail(opened, "this block is never closed with `}`".into()))
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
fn tokenize(text: &str, file: &Arc<str>) -> Result<Vec<Token>, (usize, String)> {
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
                    file: file.clone(),
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
                    file: file.clone(),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const KUBEADM: &str = r#".:53 {
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
    fn a_block_whose_keys_are_only_commas_is_refused_with_its_line() {
        // Found by the corefile fuzz target: the planner indexed a block's first key.
        let text = ", {\n    errors\n    cache U0\n    loop\n    fo0.1\n}\n";
        let err = parse(text, "Corefile", |_| None).unwrap_err().to_string();
        assert!(
            err.contains("Corefile:1") && err.contains("at least one key"),
            "{err}"
        );
        let err = parse(".:53 {\n}\n,, {\n}\n", "Corefile", |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Corefile:3"), "{err}");
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
                "(common) {\n  errors\n",
                1,
                "snippet (common) is never closed",
            ),
            (
                ".:53 {\n  import common\n}\n",
                2,
                "import common: cannot import",
            ),
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
    fn snippets_and_imports_are_expanded_where_they_stand() {
        let files = |pattern: &str, _: &str| -> Result<Vec<(String, String)>, String> {
            match pattern {
                "/custom/*.override" => Ok(vec![
                    ("/custom/a.override".into(), "log\n".into()),
                    ("/custom/b.override".into(), "errors\n".into()),
                ]),
                "/custom/*.server" => Ok(vec![(
                    "/custom/stub.server".into(),
                    "corp.example:53 {\n  forward . 10.0.0.53\n}\n".into(),
                )]),
                "/none/*.server" => Ok(vec![]),
                "/custom/broken.server" => {
                    Ok(vec![("/custom/broken.server".into(), "\n\nbad {\n".into())])
                }
                other => Err(format!("{other}: no such file")),
            }
        };
        let text = "(common) {\n  cache 30 {\n    disable success cluster.local\n  }\n}\n.:53 {\n  import common\n  import /custom/*.override\n}\nimport /custom/*.server\nimport /none/*.server\n";
        let corefile = parse_with(text, "Corefile", &|_| None, &files).unwrap();
        assert_eq!(corefile.blocks.len(), 2);
        let names: Vec<&str> = corefile.blocks[0]
            .directives
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["cache", "log", "errors"]);
        assert_eq!(
            corefile.blocks[0].directives[0].block[0].args,
            ["success", "cluster.local"]
        );
        assert_eq!(corefile.blocks[1].keys[0].zone, name("corp.example."));
        // A mistake in an imported file is named with that file and its line.
        let err = parse_with(
            ".:53 {\n}\nimport /custom/broken.server\n",
            "Corefile",
            &|_| None,
            &files,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/custom/broken.server:3: "), "{err}");
        let err = parse_with(
            ".:53 {\n  import /missing\n}\n",
            "Corefile",
            &|_| None,
            &files,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "Corefile:2: import /missing: /missing: no such file");
        let err = parse_with(
            "(a) {\n  log\n}\n(a) {\n  errors\n}\n.:53 {\n  import a\n}\n",
            "Corefile",
            &|_| None,
            &files,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "Corefile:4: redeclaration of previously declared snippet a"
        );
    }

    #[test]
    fn wildcards_match_as_the_shell_matches_them() {
        assert!(wildcard("*.override", "a.override"));
        assert!(!wildcard("*.override", "a.server"));
        assert!(wildcard("db-?.server", "db-1.server"));
        assert!(wildcard("[a-c]*", "beta"));
        assert!(!wildcard("[!a-c]*", "beta"));
        assert!(wildcard("*", ""));
    }

    #[test]
    fn a_corefile_is_read_with_its_imports_from_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("custom")).unwrap();
        std::fs::write(dir.path().join("custom/x.override"), "log\n").unwrap();
        std::fs::write(
            dir.path().join("Corefile"),
            ".:53 {\n  import custom/*.override\n  import optional/*.override\n}\n",
        )
        .unwrap();
        let corefile = super::read(&dir.path().join("Corefile"), &|_| None).unwrap();
        assert_eq!(corefile.blocks[0].directives[0].name, "log");
    }

    #[test]
    fn a_relative_import_inside_an_imported_file_is_taken_from_that_files_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.conf"), "import b.conf\n").unwrap();
        std::fs::write(dir.path().join("sub/b.conf"), "errors\n").unwrap();
        std::fs::write(
            dir.path().join("Corefile"),
            ".:53 {\n  import sub/a.conf\n}\n",
        )
        .unwrap();
        let corefile = super::read(&dir.path().join("Corefile"), &|_| None).unwrap();
        let errors = &corefile.blocks[0].directives[0];
        assert_eq!(errors.name, "errors");
        assert!(errors.file.ends_with("sub/b.conf"), "{}", errors.file);
    }
}
