//! Calico's selector language (the `selector`, `namespaceSelector`, `notSelector` … fields of
//! Calico's policies, rules and host endpoints), parsed into a [`Selector`] and matched against
//! labels as libcalico-go does. The reference is libcalico-go's own code
//! (`libcalico-go/lib/selector/tokenizer/tokenizer.go`, `parser/parser.go`, `parser/ast.go` in
//! projectcalico/calico, read at 87c15906, August 2026) and Calico's documentation (the
//! "Selectors" section of reference/resources/networkpolicy); the tests hold this parser to a
//! literal port of libcalico-go's tokenizer and parser.
//!
//! ```text
//! selector = [ or ]                     ; empty or blank: all()
//! or       = and { "||" and }
//! and      = op { "&&" op }
//! op       = { "!" } ( "(" or ")" | "all(" ")" | "global(" ")" | "has(" key ")"
//!                    | key ( "==" | "!=" | "contains" | "starts" "with" | "ends" "with" ) value
//!                    | key ( "in" | "not" "in" ) "{" [ value { "," value } [ "," ] ] "}" )
//! key      = 1 to 512 of A-Z a-z 0-9 _ . / -
//! value    = '"' { any but '"' } '"' | "'" { any but "'" } "'"    ; no escapes
//! ```
//!
//! What Calico does that one might not guess, and this module does too:
//! - whitespace is a space or a tab, anywhere between tokens; a newline is an error (so a YAML
//!   `|` block with its trailing newline is refused, as Calico's validation refuses it);
//! - `has(`, `all(` and `global(` are single tokens: `has (a)` is an error, `has( a )` is not;
//! - two-word operators may be written as one: `startswith`, `endswith`, `notin`;
//! - `!` binds to one operation and a run of them folds (`!!has(a)` is `has(a)`); `&&` binds
//!   tighter than `||`; both are n-ary (`a && b && c` is one node) and parentheses make no node
//!   of their own, so the tree is libcalico-go's;
//! - keys are any run of the characters above: Calico does not apply Kubernetes' label-key
//!   rules (`a/b/c` is a key, which no Kubernetes label can have);
//! - a set is sorted and deduplicated, may be empty (`k in {}` matches nothing, `k not in {}`
//!   everything) and may end with a comma;
//! - `!=` and `not in` match when the label is absent, every other comparison does not; values
//!   compare byte for byte, case-sensitively.
//!
//! Where this module departs from Calico: more than [`MAX_NESTING`] nested parentheses are
//! refused, and [`Selector::check_global`] reads the tree where Calico reads the text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::mem;
use std::str::FromStr;

/// The longest label key Calico's tokenizer accepts (`tokenizer.MaxLabelLength`).
pub const MAX_KEY_LEN: usize = 512;

/// How deeply parentheses may nest. libcalico-go has no limit; Calico's API caps selectors at
/// 1024 characters, which allows 509 levels. Parsing here costs no stack, but printing,
/// matching and dropping the tree recurse, and a debug build's printing needs about 1 MiB of
/// stack per 1000 levels of tree (two per parenthesis, negated conjunctions): 256 keeps a hostile
/// selector far from a 2 MiB thread stack, and no written selector comes near it.
pub const MAX_NESTING: usize = 256;

/// A parsed selector: libcalico-go's tree (`parser/ast.go`), node for node.
///
/// `And` and `Or` hold two operands or more when parsed; a tree built by hand must keep that,
/// and its keys and values must be writable in the language (keys of the characters above, no
/// value holding both quote characters), for [`Display`](fmt::Display) to parse back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `all()` (and the empty selector): everything in the selector's scope. In a rule's
    /// `namespaceSelector` that is every namespace, so every workload and no host endpoint
    /// (libcalico-go rewrites it there to `has(projectcalico.org/namespace)`).
    All,
    /// `global()`: "all non-namespaced resources". Calico allows it only as the whole of a
    /// rule's `namespaceSelector` ([`Selector::check_global`]), where it widens the rule's
    /// `selector` from workloads to host endpoints and global network sets: libcalico-go rewrites
    /// it there to `!has(projectcalico.org/namespace)` and matches that against endpoints, not
    /// namespaces. [`Selector::matches`] treats it as libcalico-go's evaluator does (true), which
    /// is only right where it cannot appear; a caller compiling a namespaceSelector must test
    /// [`Selector::is_global`] first.
    Global,
    /// `has(key)`.
    Has(String),
    /// `key == "value"`.
    Eq(String, String),
    /// `key != "value"`: also true when the label is absent.
    Ne(String, String),
    /// `key in {"a", "b"}`.
    In(String, BTreeSet<String>),
    /// `key not in {"a", "b"}`: also true when the label is absent.
    NotIn(String, BTreeSet<String>),
    /// `key contains "s"`.
    Contains(String, String),
    /// `key starts with "s"`.
    StartsWith(String, String),
    /// `key ends with "s"`.
    EndsWith(String, String),
    /// `!operand`.
    Not(Box<Selector>),
    /// `a && b && …`.
    And(Vec<Selector>),
    /// `a || b || …`.
    Or(Vec<Selector>),
}

/// A selector that does not parse: where (byte offset and 1-based column) and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?} at position {position} (column {column}): expected {expected}")]
pub struct ParseError {
    pub selector: String,
    /// Byte offset where parsing stopped (the selector's length when it ended too early).
    pub position: usize,
    /// The character column of `position`, from 1.
    pub column: usize,
    pub expected: Expected,
}

/// What the parser expected where it stopped (an `Error` only for its derived `Display`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Expected {
    /// The start of an operation.
    #[error("a label key, has(…), all(), global(), `!` or `(`")]
    Expression,
    /// A label key inside `has(`.
    #[error("a label key (letters, digits, `_`, `.`, `/`, `-`)")]
    Key,
    #[error("a label key of at most {MAX_KEY_LEN} characters, not {len}")]
    ShorterKey { len: usize },
    #[error(
        "an operator after label key {key:?}: ==, !=, in, not in, contains, starts with or ends with"
    )]
    Operator { key: String },
    /// This exact token (`==` after `=`, `&&` after `&`, `)` closing `has(`, `all(` …).
    #[error("`{0}`")]
    Token(&'static str),
    /// After `==`, `!=`, `contains`, `starts with` or `ends with`.
    #[error("a quoted value")]
    QuotedValue,
    #[error("a closing {quote} for the value opened at position {opened_at}")]
    ClosingQuote { quote: char, opened_at: usize },
    /// After `in` or `not in`.
    #[error("`{{` opening a set of quoted values")]
    SetOpen,
    #[error("a quoted value or `}}`")]
    SetValueOrClose,
    #[error("`,` or `}}`")]
    CommaOrClose,
    #[error("`&&`, `||` or `)` closing the `(` at position {opened_at}")]
    CloseParen { opened_at: usize },
    #[error("`&&`, `||` or the end of the selector")]
    AndOrEnd,
    #[error("at most {MAX_NESTING} nested parentheses")]
    ShallowerNesting,
}

/// Where a selector is written, for Calico's rules on `global()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// A rule's `source.namespaceSelector` or `destination.namespaceSelector`.
    RuleNamespaceSelector,
    /// Any other selector field (a policy's `selector`, a rule's `selector`, …).
    Other,
}

/// `global()` where Calico refuses it, with Calico's messages (its CRDs' CEL rules, and
/// `validateEntityRule`'s `globalSelectorOnly`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GlobalMisuse {
    #[error("global() can only be used in an EntityRule namespaceSelector")]
    OutsideNamespaceSelector,
    #[error("global() cannot be combined with other selectors")]
    NotAlone,
}

impl Selector {
    /// Parses a selector; the empty or blank selector is `all()`, as in libcalico-go.
    pub fn parse(src: &str) -> Result<Selector, ParseError> {
        let mut p = Parser {
            src,
            bytes: src.as_bytes(),
            pos: 0,
        };
        p.ws();
        if p.pos == p.bytes.len() {
            return Ok(Selector::All);
        }
        p.selector()
    }

    /// Whether these labels are selected, with libcalico-go's `Evaluate` semantics.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |key: &String| labels.get(key).map(String::as_str);
        match self {
            Selector::All | Selector::Global => true,
            Selector::Has(key) => labels.contains_key(key),
            Selector::Eq(key, value) => get(key) == Some(value),
            Selector::Ne(key, value) => get(key) != Some(value),
            Selector::In(key, set) => get(key).is_some_and(|v| set.contains(v)),
            Selector::NotIn(key, set) => !get(key).is_some_and(|v| set.contains(v)),
            Selector::Contains(key, s) => get(key).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(key, s) => get(key).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(key, s) => get(key).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(operand) => !operand.matches(labels),
            Selector::And(operands) => operands.iter().all(|o| o.matches(labels)),
            Selector::Or(operands) => operands.iter().any(|o| o.matches(labels)),
        }
    }

    /// The label keys the selector reads: a label outside this set never changes its answer.
    pub fn labels_used(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        self.collect_keys(&mut keys);
        keys
    }

    fn collect_keys(&self, keys: &mut BTreeSet<String>) {
        match self {
            Selector::All | Selector::Global => {}
            Selector::Has(key)
            | Selector::Eq(key, _)
            | Selector::Ne(key, _)
            | Selector::In(key, _)
            | Selector::NotIn(key, _)
            | Selector::Contains(key, _)
            | Selector::StartsWith(key, _)
            | Selector::EndsWith(key, _) => {
                keys.insert(key.clone());
            }
            Selector::Not(operand) => operand.collect_keys(keys),
            Selector::And(operands) | Selector::Or(operands) => {
                operands.iter().for_each(|o| o.collect_keys(keys))
            }
        }
    }

    /// Whether `global()` appears anywhere.
    pub fn uses_global(&self) -> bool {
        match self {
            Selector::Global => true,
            Selector::Not(operand) => operand.uses_global(),
            Selector::And(operands) | Selector::Or(operands) => {
                operands.iter().any(Selector::uses_global)
            }
            _ => false,
        }
    }

    /// Whether the selector is `global()` and nothing else.
    pub fn is_global(&self) -> bool {
        *self == Selector::Global
    }

    /// Calico's rules on `global()`: only in a rule's namespaceSelector, and only alone there.
    ///
    /// Calico checks the text: its CRDs refuse any of those fields containing `global(`, a
    /// quoted value included, and `validateEntityRule` refuses `(global())` and `!!global()`
    /// by their tokens. Those are refused here only where they mean something else: a value is
    /// a value, and `(global())` is `global()`.
    pub fn check_global(&self, field: Field) -> Result<(), GlobalMisuse> {
        match field {
            _ if !self.uses_global() => Ok(()),
            Field::Other => Err(GlobalMisuse::OutsideNamespaceSelector),
            Field::RuleNamespaceSelector if self.is_global() => Ok(()),
            Field::RuleNamespaceSelector => Err(GlobalMisuse::NotAlone),
        }
    }
}

impl FromStr for Selector {
    type Err = ParseError;

    fn from_str(src: &str) -> Result<Selector, ParseError> {
        Selector::parse(src)
    }
}

/// libcalico-go's canonical form (`Selector.String()`): `&&` and `||` in parentheses, values in
/// double quotes unless they hold one. It parses back to the same tree; the one departure is a
/// negated negation, written `!(!x)` where libcalico-go writes `!!x` (which reads back as `x`).
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Global => f.write_str("global()"),
            Selector::Has(key) => write!(f, "has({key})"),
            Selector::Eq(key, v) => write!(f, "{key} == {}", Quoted(v)),
            Selector::Ne(key, v) => write!(f, "{key} != {}", Quoted(v)),
            Selector::Contains(key, v) => write!(f, "{key} contains {}", Quoted(v)),
            Selector::StartsWith(key, v) => write!(f, "{key} starts with {}", Quoted(v)),
            Selector::EndsWith(key, v) => write!(f, "{key} ends with {}", Quoted(v)),
            Selector::In(key, set) => write!(f, "{key} in {}", Set(set)),
            Selector::NotIn(key, set) => write!(f, "{key} not in {}", Set(set)),
            Selector::Not(operand) => match **operand {
                Selector::Not(_) => write!(f, "!({operand})"),
                _ => write!(f, "!{operand}"),
            },
            Selector::And(operands) => Joined(operands, " && ").fmt(f),
            Selector::Or(operands) => Joined(operands, " || ").fmt(f),
        }
    }
}

struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = if self.0.contains('"') { '\'' } else { '"' };
        write!(f, "{quote}{}{quote}", self.0)
    }
}

struct Set<'a>(&'a BTreeSet<String>);

impl fmt::Display for Set<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, value) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            Quoted(value).fmt(f)?;
        }
        f.write_str("}")
    }
}

struct Joined<'a>(&'a [Selector], &'static str);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, operand) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(self.1)?;
            }
            operand.fmt(f)?;
        }
        f.write_str(")")
    }
}

fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-')
}

/// A parenthesised group being read (or the whole selector): its `||` operands so far, the
/// `&&` operands of its last one, and what it needs once closed.
#[derive(Default)]
struct Group {
    or: Vec<Selector>,
    and: Vec<Selector>,
    negated: bool,
    opened_at: usize,
}

impl Group {
    /// The group's tree, with its last operand.
    fn close(mut self, last: Selector) -> Selector {
        self.and.push(last);
        self.or.push(n_ary(self.and, Selector::And));
        n_ary(self.or, Selector::Or)
    }
}

/// One operand stands alone; more make an n-ary node, as in libcalico-go.
fn n_ary(operands: Vec<Selector>, node: fn(Vec<Selector>) -> Selector) -> Selector {
    match <[Selector; 1]>::try_from(operands) {
        Ok([only]) => only,
        Err(operands) => node(operands),
    }
}

fn negate(sel: Selector, negated: bool) -> Selector {
    if negated {
        Selector::Not(Box::new(sel))
    } else {
        sel
    }
}

/// One pass over the bytes. libcalico-go tokenizes first, reading operator words only right
/// after a label; here they are read only where the grammar has an operator, which is the same
/// place, so both accept the same selectors (the tests check it against a port of the two
/// passes).
struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, position: usize, expected: Expected) -> ParseError {
        // Positions are always after an ASCII byte or at the start, so on a char boundary.
        let column = self
            .src
            .get(..position)
            .map_or(position, |s| s.chars().count())
            + 1;
        ParseError {
            selector: self.src.to_owned(),
            position,
            column,
            expected,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        let found = self.rest().starts_with(token.as_bytes());
        if found {
            self.pos += token.len();
        }
        found
    }

    fn expect(&mut self, token: &'static str) -> Result<(), ParseError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.err(self.pos, Expected::Token(token)))
        }
    }

    /// `&&` or `||` (`op`), refusing a lone `&` or `|` as Calico's tokenizer does.
    fn joiner(&mut self, op: &'static str) -> Result<bool, ParseError> {
        if self.eat(op) {
            return Ok(true);
        }
        if self.peek() == op.as_bytes().first().copied() {
            return Err(self.err(self.pos, Expected::Token(op)));
        }
        Ok(false)
    }

    /// An operator word or words, as `cutPrefixCheckBreak` and `cutMultiWordPrefixCheckBreak`:
    /// one word must end on a non-key byte; several may be separated by whitespace or not, and
    /// the last one, after its whitespace, must be followed by a non-key byte.
    fn eat_words(&mut self, words: &[&str]) -> bool {
        let start = self.pos;
        for word in words {
            if !self.eat(word) {
                self.pos = start;
                return false;
            }
            if words.len() > 1 {
                self.ws();
            }
        }
        if self.peek().is_some_and(is_key_byte) {
            self.pos = start;
            return false;
        }
        true
    }

    /// The whole selector, without recursion: one [`Group`] per open parenthesis, so nesting
    /// costs heap, not stack (debug builds spend kilobytes of stack per recursive level).
    fn selector(&mut self) -> Result<Selector, ParseError> {
        let mut open: Vec<Group> = Vec::new();
        let mut group = Group::default();
        loop {
            // An operation: its `!`s, then a group or a leaf. A run of `!` folds, as in
            // libcalico-go; `!=` here is its "not equal" token, out of place, left for `leaf`.
            self.ws();
            let mut negated = false;
            while self.peek() == Some(b'!') && self.bytes.get(self.pos + 1) != Some(&b'=') {
                negated = !negated;
                self.pos += 1;
                self.ws();
            }
            let start = self.pos;
            if self.eat("(") {
                if open.len() == MAX_NESTING {
                    return Err(self.err(start, Expected::ShallowerNesting));
                }
                let inner = Group {
                    negated,
                    opened_at: start,
                    ..Group::default()
                };
                open.push(mem::replace(&mut group, inner));
                continue;
            }
            let mut operand = negate(self.leaf()?, negated);
            // After an operand: `)` closes groups (each one an operand of its parent), until
            // `&&`, `||` or the end.
            loop {
                self.ws();
                if self.joiner("&&")? {
                    group.and.push(operand);
                    break;
                }
                if self.joiner("||")? {
                    group.and.push(operand);
                    group
                        .or
                        .push(n_ary(mem::take(&mut group.and), Selector::And));
                    break;
                }
                let Some(parent) = open.pop() else {
                    if self.pos != self.bytes.len() {
                        return Err(self.err(self.pos, Expected::AndOrEnd));
                    }
                    return Ok(group.close(operand));
                };
                if !self.eat(")") {
                    let expected = Expected::CloseParen {
                        opened_at: group.opened_at,
                    };
                    return Err(self.err(self.pos, expected));
                }
                let negated = group.negated;
                operand = negate(mem::replace(&mut group, parent).close(operand), negated);
            }
        }
    }

    fn leaf(&mut self) -> Result<Selector, ParseError> {
        if self.eat("has(") {
            self.ws();
            let key = self.key(Expected::Key)?;
            self.ws();
            self.expect(")")?;
            return Ok(Selector::Has(key));
        }
        for (call, sel) in [("all(", Selector::All), ("global(", Selector::Global)] {
            if self.eat(call) {
                self.ws();
                self.expect(")")?;
                return Ok(sel);
            }
        }
        let key = self.key(Expected::Expression)?;
        self.ws();
        type Make = fn(String, String) -> Selector;
        let string_op: Option<Make> = if self.eat("==") {
            Some(Selector::Eq)
        } else if self.eat("!=") {
            Some(Selector::Ne)
        } else if self.peek() == Some(b'=') {
            return Err(self.err(self.pos, Expected::Token("==")));
        } else if self.eat_words(&["contains"]) {
            Some(Selector::Contains)
        } else if self.eat_words(&["starts", "with"]) {
            Some(Selector::StartsWith)
        } else if self.eat_words(&["ends", "with"]) {
            Some(Selector::EndsWith)
        } else {
            None
        };
        if let Some(make) = string_op {
            self.ws();
            let value = self.value(Expected::QuotedValue)?;
            return Ok(make(key, value));
        }
        let negated_set = if self.eat_words(&["not", "in"]) {
            true
        } else if self.eat_words(&["in"]) {
            false
        } else {
            return Err(self.err(self.pos, Expected::Operator { key }));
        };
        self.ws();
        if !self.eat("{") {
            return Err(self.err(self.pos, Expected::SetOpen));
        }
        let set = self.set()?;
        Ok(if negated_set {
            Selector::NotIn(key, set)
        } else {
            Selector::In(key, set)
        })
    }

    fn key(&mut self, expected: Expected) -> Result<String, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(is_key_byte) {
            self.pos += 1;
        }
        let len = self.pos - start;
        if len == 0 {
            return Err(self.err(start, expected));
        }
        if len > MAX_KEY_LEN {
            return Err(self.err(start, Expected::ShorterKey { len }));
        }
        Ok(self.src.get(start..self.pos).unwrap_or_default().to_owned())
    }

    fn value(&mut self, expected: Expected) -> Result<String, ParseError> {
        let open = self.pos;
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'')) => q,
            _ => return Err(self.err(open, expected)),
        };
        let body = open + 1;
        let Some(len) = self.rest().iter().skip(1).position(|&c| c == quote) else {
            let closing = Expected::ClosingQuote {
                quote: char::from(quote),
                opened_at: open,
            };
            return Err(self.err(self.bytes.len(), closing));
        };
        self.pos = body + len + 1;
        // Both ends are next to an ASCII quote, so on char boundaries.
        Ok(self
            .src
            .get(body..body + len)
            .unwrap_or_default()
            .to_owned())
    }

    /// The values of a set, after its `{`, up to and including its `}`.
    fn set(&mut self) -> Result<BTreeSet<String>, ParseError> {
        let mut values = BTreeSet::new();
        loop {
            self.ws();
            if self.eat("}") {
                return Ok(values);
            }
            values.insert(self.value(Expected::SetValueOrClose)?);
            self.ws();
            if self.eat("}") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.err(self.pos, Expected::CommaOrClose));
            }
        }
    }
}

#[cfg(test)]
mod tests;
