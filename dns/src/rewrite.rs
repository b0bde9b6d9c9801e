//! The `rewrite name` directive: the question's name is rewritten before the rest of the chain
//! (cache, hosts, kubernetes, forward) sees it — `exact`, `prefix`, `suffix`, `substring` or
//! `regex` (with `{N}` groups) — and the reply is rewritten back: the question restored, and
//! owner names and values (CNAME, SRV, MX, NS, PTR, SOA targets) mapped back by `answer auto`
//! (always for `exact`) or by `answer name|value FROM TO` regular expressions, as CoreDNS's
//! plugin does. Rules apply in order; `stop` (the default) ends at the first that matched,
//! `continue` goes on. Pure.

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::{CNAME, MX, NS, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record};

/// How a rule matches the question's name (lower-case, fully qualified).
#[derive(Debug, Clone)]
pub enum Match {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Substring(String),
    Regex(regex::Regex),
}

/// How a reply's names go back.
#[derive(Debug, Clone)]
pub enum Rewriter {
    /// The rewritten name (or a name ending in it) back to the original.
    Remap { from: String, to: String },
    /// A suffix back to another.
    Suffix { from: String, to: String },
    /// A regular expression's match to a replacement with `{N}` groups.
    Regex { pattern: regex::Regex, to: String },
}

impl Rewriter {
    fn apply(&self, text: &str) -> String {
        match self {
            Rewriter::Remap { from, to } => {
                if text == from {
                    return to.clone();
                }
                match text.strip_suffix(from.as_str()) {
                    Some(head) if head.ends_with('.') => format!("{head}{to}"),
                    _ => text.to_string(),
                }
            }
            Rewriter::Suffix { from, to } => match text.strip_suffix(from.as_str()) {
                Some(head) => format!("{head}{to}"),
                None => text.to_string(),
            },
            Rewriter::Regex { pattern, to } => match pattern.captures(text) {
                Some(groups) => substitute_groups(to, &groups),
                None => text.to_string(),
            },
        }
    }
}

impl PartialEq for Match {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Match::Exact(a), Match::Exact(b))
            | (Match::Prefix(a), Match::Prefix(b))
            | (Match::Suffix(a), Match::Suffix(b))
            | (Match::Substring(a), Match::Substring(b)) => a == b,
            (Match::Regex(a), Match::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for Match {}

impl PartialEq for Rewriter {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Rewriter::Remap { from: a, to: b }, Rewriter::Remap { from: c, to: d })
            | (Rewriter::Suffix { from: a, to: b }, Rewriter::Suffix { from: c, to: d }) => {
                a == c && b == d
            }
            (Rewriter::Regex { pattern: a, to: b }, Rewriter::Regex { pattern: c, to: d }) => {
                a.as_str() == c.as_str() && b == d
            }
            _ => false,
        }
    }
}

impl Eq for Rewriter {}

/// What a reply's records get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseRule {
    /// Owner names.
    Name(Rewriter),
    /// The names records point to.
    Value(Rewriter),
}

/// One `rewrite [stop|continue] name ...` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRule {
    /// `continue`: later rules apply too.
    pub continues: bool,
    pub matcher: Match,
    pub to: String,
    /// `answer auto`: map the reply back from the rewritten name (always with `exact`).
    pub auto: bool,
    /// `answer name|value FROM TO`.
    pub answers: Vec<ResponseRule>,
}

impl NameRule {
    /// The rewritten name of `name`, or `None` when the rule does not match.
    fn rewrite(&self, name: &str) -> Option<String> {
        match &self.matcher {
            Match::Exact(from) => (name == from).then(|| self.to.clone()),
            Match::Prefix(prefix) => name
                .strip_prefix(prefix.as_str())
                .map(|rest| format!("{}{rest}", self.to)),
            Match::Suffix(suffix) => name
                .strip_suffix(suffix.as_str())
                .map(|head| format!("{head}{}", self.to)),
            Match::Substring(part) => name
                .contains(part.as_str())
                .then(|| name.replace(part.as_str(), &self.to)),
            Match::Regex(pattern) => pattern
                .captures(name)
                .map(|groups| substitute_groups(&self.to, &groups)),
        }
    }

    /// The rules that map a reply back, the question having gone from `original` to `new`.
    fn response_rules(&self, original: &str, new: &str) -> Vec<ResponseRule> {
        let mut rules = Vec::new();
        match &self.matcher {
            Match::Suffix(suffix) if self.auto => {
                let back = Rewriter::Suffix {
                    from: self.to.clone(),
                    to: suffix.clone(),
                };
                rules.push(ResponseRule::Name(back.clone()));
                rules.push(ResponseRule::Value(back));
            }
            Match::Suffix(_) => {}
            Match::Exact(_) => push_remap(&mut rules, original, new),
            _ if self.auto => push_remap(&mut rules, original, new),
            _ => {}
        }
        rules.extend(self.answers.iter().cloned());
        rules
    }
}

fn push_remap(rules: &mut Vec<ResponseRule>, original: &str, new: &str) {
    let back = Rewriter::Remap {
        from: new.to_string(),
        to: original.to_string(),
    };
    rules.push(ResponseRule::Name(back.clone()));
    rules.push(ResponseRule::Value(back));
}

/// `template` with `{0}`, `{1}`, ... replaced by the groups.
fn substitute_groups(template: &str, groups: &regex::Captures<'_>) -> String {
    let mut out = template.to_string();
    for (i, group) in groups.iter().enumerate() {
        out = out.replace(&format!("{{{i}}}"), group.map_or("", |m| m.as_str()));
    }
    out
}

/// What the rules made of a request: the request the rest of the chain sees, and how to map
/// its reply back.
#[derive(Debug, Clone)]
pub struct Rewritten {
    pub request: Message,
    pub back: Vec<ResponseRule>,
}

/// `req` rewritten by `rules`, or `None` when none matched.
pub fn apply(rules: &[NameRule], req: &Message) -> Result<Option<Rewritten>, String> {
    if rules.is_empty() {
        return Ok(None);
    }
    let mut name = req.queries[0].name().to_ascii().to_ascii_lowercase();
    let mut back = Vec::new();
    let mut matched = false;
    for rule in rules {
        let Some(new) = rule.rewrite(&name) else {
            continue;
        };
        matched = true;
        back.extend(rule.response_rules(&name, &new));
        name = new;
        if !rule.continues {
            break;
        }
    }
    if !matched {
        return Ok(None);
    }
    let parsed =
        Name::from_ascii(&name).map_err(|_| format!("invalid name after rewrite: {name}"))?;
    let mut request = req.clone();
    request.queries[0].set_name(parsed);
    Ok(Some(Rewritten { request, back }))
}

/// `reply` mapped back for the client: the question of `original`, and every record's owner
/// and value through `back` (last rule first, as CoreDNS applies them).
pub fn revert(reply: &mut Message, original: &Message, back: &[ResponseRule]) {
    reply.queries = original.queries.clone();
    for record in reply
        .answers
        .iter_mut()
        .chain(reply.authorities.iter_mut())
        .chain(reply.additionals.iter_mut())
    {
        for rule in back.iter().rev() {
            match rule {
                ResponseRule::Name(r) => {
                    let now = record.name.to_ascii();
                    let new = r.apply(&now);
                    if new != now
                        && let Ok(name) = Name::from_ascii(&new)
                    {
                        record.name = name;
                    }
                }
                ResponseRule::Value(r) => rewrite_value(record, r),
            }
        }
    }
}

fn rewrite_value(record: &mut Record, rule: &Rewriter) {
    let map = |name: &Name| -> Option<Name> {
        let now = name.to_ascii();
        let new = rule.apply(&now);
        (new != now).then(|| Name::from_ascii(&new).ok()).flatten()
    };
    let data = match &record.data {
        RData::CNAME(CNAME(target)) => map(target).map(|n| RData::CNAME(CNAME(n))),
        RData::NS(NS(target)) => map(target).map(|n| RData::NS(NS(n))),
        RData::PTR(PTR(target)) => map(target).map(|n| RData::PTR(PTR(n))),
        RData::MX(mx) => map(&mx.exchange).map(|n| RData::MX(MX::new(mx.preference, n))),
        RData::SRV(srv) => {
            map(&srv.target).map(|n| RData::SRV(SRV::new(srv.priority, srv.weight, srv.port, n)))
        }
        RData::SOA(soa) => map(&soa.mname).map(|n| {
            let mut soa = soa.clone();
            soa.mname = n;
            RData::SOA(soa)
        }),
        _ => None,
    };
    if let Some(data) = data {
        record.data = data;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::RecordType;
    use hickory_proto::rr::rdata::A;

    fn request(name: &str) -> Message {
        let mut m = Message::new(1, MessageType::Query, OpCode::Query);
        m.queries
            .push(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m
    }

    fn rule(matcher: Match, to: &str, auto: bool) -> NameRule {
        NameRule {
            continues: false,
            matcher,
            to: to.into(),
            auto,
            answers: vec![],
        }
    }

    fn asked(rules: &[NameRule], name: &str) -> Option<String> {
        apply(rules, &request(name))
            .unwrap()
            .map(|r| r.request.queries[0].name().to_ascii())
    }

    #[test]
    fn each_match_type_rewrites_the_question_as_coredns_does() {
        let cases = [
            (
                Match::Exact("db.example.".into()),
                "db.default.svc.cluster.local.",
                "db.example.",
                Some("db.default.svc.cluster.local."),
            ),
            (
                Match::Prefix("api-".into()),
                "web-",
                "api-x.example.",
                Some("web-x.example."),
            ),
            (
                Match::Suffix(".example.".into()),
                ".default.svc.cluster.local.",
                "db.example.",
                Some("db.default.svc.cluster.local."),
            ),
            (
                Match::Substring("old".into()),
                "new",
                "a.old.example.",
                Some("a.new.example."),
            ),
            (
                Match::Regex(regex::Regex::new(r"^(.*)\.corp\.$").unwrap()),
                "{1}.default.svc.cluster.local.",
                "db.corp.",
                Some("db.default.svc.cluster.local."),
            ),
            (
                Match::Exact("db.example.".into()),
                "x.",
                "other.example.",
                None,
            ),
        ];
        for (matcher, to, name, want) in cases {
            assert_eq!(
                asked(&[rule(matcher, to, false)], name).as_deref(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn a_reply_is_mapped_back_to_the_names_the_client_asked() {
        let rules = [rule(
            Match::Suffix(".example.".into()),
            ".default.svc.cluster.local.",
            true,
        )];
        let req = request("db.example.");
        let rewritten = apply(&rules, &req).unwrap().unwrap();
        let mut reply = Message::new(1, MessageType::Response, OpCode::Query);
        reply.queries = rewritten.request.queries.clone();
        let inner = Name::from_ascii("db.default.svc.cluster.local.").unwrap();
        reply.answers.push(Record::from_rdata(
            inner.clone(),
            5,
            RData::CNAME(CNAME(
                Name::from_ascii("real.default.svc.cluster.local.").unwrap(),
            )),
        ));
        reply
            .answers
            .push(Record::from_rdata(inner, 5, RData::A(A::new(10, 0, 0, 1))));
        revert(&mut reply, &req, &rewritten.back);
        assert_eq!(reply.queries[0].name().to_ascii(), "db.example.");
        assert_eq!(reply.answers[0].name.to_ascii(), "db.example.");
        assert_eq!(reply.answers[0].data.to_string(), "real.example.");
        assert_eq!(reply.answers[1].name.to_ascii(), "db.example.");
    }

    #[test]
    fn stop_ends_at_the_first_match_and_continue_goes_on() {
        let mut first = rule(Match::Prefix("a-".into()), "b-", false);
        let second = rule(Match::Prefix("b-".into()), "c-", false);
        assert_eq!(
            asked(&[first.clone(), second.clone()], "a-x.").as_deref(),
            Some("b-x.")
        );
        first.continues = true;
        assert_eq!(asked(&[first, second], "a-x.").as_deref(), Some("c-x."));
    }
}
