//! The part of containerd's filter syntax snapshot listings use:
//! comma-joined conditions that must all hold, each `field`, `field==value`
//! or `field!=value`, over `name`, `parent`, `kind` and `labels.<key>`
//! (keys and values may be double-quoted).

use super::error::{Error, Result};
use super::meta::Kind;
use super::store::Info;

/// One parsed filter: a conjunction of conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(Vec<Cond>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Cond {
    Present(Field),
    Eq(Field, String),
    Ne(Field, String),
}

impl Filter {
    /// Parses one filter string.
    pub fn parse(s: &str) -> Result<Filter> {
        let bad = |why: &str| Error::invalid(format!("filter {s:?}: {why}"));
        let mut p = Parser {
            s: s.as_bytes(),
            at: 0,
        };
        let mut conds = Vec::new();
        loop {
            let field = match p.token().map_err(|e| bad(&e))?.as_str() {
                "name" => Field::Name,
                "parent" => Field::Parent,
                "kind" => Field::Kind,
                "labels" => {
                    if !p.eat(".") {
                        return Err(bad("labels needs a key: labels.<key>"));
                    }
                    Field::Label(p.token().map_err(|e| bad(&e))?)
                }
                other => return Err(bad(&format!("unknown field {other:?}"))),
            };
            let cond = if p.eat("==") {
                Cond::Eq(field, p.token().map_err(|e| bad(&e))?)
            } else if p.eat("!=") {
                Cond::Ne(field, p.token().map_err(|e| bad(&e))?)
            } else if p.eat("~=") {
                return Err(bad("regular-expression matches (~=) are not supported"));
            } else {
                Cond::Present(field)
            };
            conds.push(cond);
            p.skip_space();
            if p.at == p.s.len() {
                return Ok(Filter(conds));
            }
            if !p.eat(",") {
                return Err(bad(&format!("unexpected text at byte {}", p.at)));
            }
        }
    }

    /// Whether `info` meets every condition.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.iter().all(|c| match c {
            Cond::Present(f) => value(f, info).is_some_and(|v| !v.is_empty()),
            Cond::Eq(f, want) => value(f, info).is_some_and(|v| v == *want),
            Cond::Ne(f, want) => value(f, info).is_none_or(|v| v != *want),
        })
    }
}

fn value(f: &Field, i: &Info) -> Option<String> {
    match f {
        Field::Name => Some(i.name.clone()),
        Field::Parent => Some(i.parent.clone()),
        Field::Kind => Some(
            match i.kind {
                Kind::View => "view",
                Kind::Active => "active",
                Kind::Committed => "committed",
            }
            .into(),
        ),
        Field::Label(k) => i.labels.get(k).cloned(),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.s.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, what: &str) -> bool {
        self.skip_space();
        if self.s[self.at..].starts_with(what.as_bytes()) {
            self.at += what.len();
            true
        } else {
            false
        }
    }

    /// A bare word (up to an operator, dot, comma or space) or a quoted string.
    fn token(&mut self) -> std::result::Result<String, String> {
        self.skip_space();
        if self.eat("\"") {
            let mut out = Vec::new();
            loop {
                match self.s.get(self.at) {
                    None => return Err("unterminated quoted string".into()),
                    Some(b'"') => {
                        self.at += 1;
                        break;
                    }
                    Some(b'\\') if self.at + 1 < self.s.len() => {
                        out.push(self.s[self.at + 1]);
                        self.at += 2;
                    }
                    Some(&c) => {
                        out.push(c);
                        self.at += 1;
                    }
                }
            }
            return String::from_utf8(out).map_err(|_| "quoted string is not UTF-8".into());
        }
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|c| !b".,=!~\" \t".contains(c))
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(format!("expected a word at byte {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;

    fn info(name: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: "p".into(),
            kind,
            created: SystemTime::now(),
            updated: SystemTime::now(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn conditions_match_like_containerd_filters() {
        let a = info("a", Kind::Committed, &[("containerd.io/gc.root", "x")]);
        let b = info("b", Kind::Active, &[]);
        let m = |f: &str, i: &Info| Filter::parse(f).unwrap().matches(i);
        assert!(m("name==a", &a) && !m("name==a", &b));
        assert!(m("kind==active", &b) && m("kind!=active", &a));
        assert!(m(r#"labels."containerd.io/gc.root""#, &a));
        assert!(!m(r#"labels."containerd.io/gc.root""#, &b));
        assert!(m(r#"labels."containerd.io/gc.root"==x, parent==p"#, &a));
        assert!(!m(r#"labels."containerd.io/gc.root"==x,name==b"#, &a));
        assert!(m(r#"name=="a""#, &a));
        for bad in ["size==1", "name~=a.*", "labels", "name==a,", "name==\"a"] {
            let e = Filter::parse(bad).unwrap_err();
            assert_eq!(e.code, tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message.starts_with("filter "), "{e}");
        }
    }
}
