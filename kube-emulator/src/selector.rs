//! Label and field selectors, with the real server's grammar and matching rules.

use serde_json::Value;

use crate::resource::Resource;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

/// A parsed `labelSelector`: requirements that must all hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<(String, Op)>);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn skip_ws(&mut self) {
        while self.s[self.pos..].starts_with(|c: char| c.is_whitespace()) {
            self.pos += self.s[self.pos..].chars().next().map_or(1, char::len_utf8);
        }
    }
    fn eat(&mut self, tok: &str) -> bool {
        if self.s[self.pos..].starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }
    /// A word: everything up to whitespace or an operator character.
    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || matches!(c, '=' | '!' | ',' | '(' | ')' | '<' | '>') {
                break;
            }
            self.pos += c.len_utf8();
        }
        &self.s[start..self.pos]
    }
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
}

impl LabelSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let err = |m: String| Err(format!("unable to parse requirement: {m}"));
        let mut reqs = Vec::new();
        let mut lx = Lexer { s, pos: 0 };
        lx.skip_ws();
        if lx.at_end() {
            return Ok(LabelSelector(reqs));
        }
        loop {
            lx.skip_ws();
            let negated = lx.eat("!");
            lx.skip_ws();
            let key = lx.word();
            if !valid_key(key) {
                return err(format!("invalid label key {key:?} in selector {s:?}"));
            }
            lx.skip_ws();
            let op = if negated {
                Op::NotExists
            } else if lx.at_end() || lx.peek() == Some(',') {
                Op::Exists
            } else if lx.eat("==") || lx.eat("=") {
                lx.skip_ws();
                Op::Eq(lx.word().to_string())
            } else if lx.eat("!=") {
                lx.skip_ws();
                Op::NotEq(lx.word().to_string())
            } else if lx.eat(">") || lx.eat("<") {
                let gt = lx.s[..lx.pos].ends_with('>');
                lx.skip_ws();
                let w = lx.word();
                let n: i64 = match w.parse() {
                    Ok(n) => n,
                    Err(_) => {
                        return err(format!(
                            "for 'Gt', 'Lt' operators, the value must be an integer, not {w:?}"
                        ));
                    }
                };
                if gt { Op::Gt(n) } else { Op::Lt(n) }
            } else {
                let w = lx.word();
                let notin = match w {
                    "in" => false,
                    "notin" => true,
                    other => {
                        return err(format!(
                            "found {other:?}, expected one of: in, notin, =, ==, !=, gt, lt in selector {s:?}"
                        ));
                    }
                };
                lx.skip_ws();
                if !lx.eat("(") {
                    return err(format!(
                        "found {:?}, expected: '(' in selector {s:?}",
                        lx.peek()
                    ));
                }
                let mut values = Vec::new();
                loop {
                    lx.skip_ws();
                    values.push(lx.word().to_string());
                    lx.skip_ws();
                    if lx.eat(",") {
                        continue;
                    }
                    if lx.eat(")") {
                        break;
                    }
                    return err(format!(
                        "found {:?}, expected: ',' or ')' in selector {s:?}",
                        lx.peek()
                    ));
                }
                if notin {
                    Op::NotIn(values)
                } else {
                    Op::In(values)
                }
            };
            let values: &[String] = match &op {
                Op::Eq(v) | Op::NotEq(v) => std::slice::from_ref(v),
                Op::In(vs) | Op::NotIn(vs) => vs,
                _ => &[],
            };
            if let Some(v) = values.iter().find(|v| !valid_value(v)) {
                return err(format!("invalid label value {v:?} in selector {s:?}"));
            }
            reqs.push((key.to_string(), op));
            lx.skip_ws();
            if lx.at_end() {
                break;
            }
            if !lx.eat(",") {
                return err(format!(
                    "found {:?}, expected: ',' or end of selector {s:?}",
                    lx.peek()
                ));
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0.iter().all(|(key, op)| {
            let v = labels.get(key).and_then(Value::as_str);
            match op {
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Eq(want) => v == Some(want.as_str()),
                Op::NotEq(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

/// A parsed `fieldSelector`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

/// The fields the real server accepts in selectors for a resource (besides the metadata ones).
fn extra_fields(res: Resource) -> &'static [&'static str] {
    match res {
        Resource::Pod => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Resource::Namespace => &["status.phase"],
        _ => &[],
    }
}

impl FieldSelector {
    pub(crate) fn parse(s: &str, res: Resource) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !extra_fields(res).contains(&field)
            {
                return Err(format!(
                    "field label not supported: {field} (resource {})",
                    res.plural()
                ));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let mut v = obj;
            for part in field.split('.') {
                v = &v[part];
            }
            let got = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

/// Both selectors of a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "n", "labels": labels}, "spec": {"nodeName": "node1"}})
    }

    #[test]
    fn label_grammar() {
        let o = pod(json!({"app": "web", "tier": "front", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app == web"));
        assert!(!m("app!=web"));
        assert!(m("missing!=x"));
        assert!(m("app"));
        assert!(!m("!app"));
        assert!(m("!missing"));
        assert!(m("app in (web, db)"));
        assert!(!m("app notin (web)"));
        assert!(m("missing notin (web)"));
        assert!(!m("missing in (web)"));
        assert!(m("app=web,tier in (front),!missing"));
        assert!(!m("app=web,tier=back"));
        assert!(m("n>4"));
        assert!(!m("n<4"));
        assert!(m("app in (web,db),tier notin (back)"));
        for bad in [
            "app in web",
            "app in (web",
            "=x",
            "app=w e b",
            "app ~ x",
            "a,,b",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors() {
        let o = pod(json!({}));
        let m = |s: &str| FieldSelector::parse(s, Resource::Pod).unwrap().matches(&o);
        assert!(m("metadata.name=p"));
        assert!(m("metadata.name==p,metadata.namespace=n"));
        assert!(!m("metadata.name!=p"));
        assert!(m("spec.nodeName=node1"));
        assert!(m("status.phase="));
        assert!(FieldSelector::parse("spec.nodeName=x", Resource::Service).is_err());
        assert!(FieldSelector::parse("metadata.labels=x", Resource::Pod).is_err());
        assert!(FieldSelector::parse("nonsense", Resource::Pod).is_err());
    }
}
