//! A literal port of libcalico-go's two passes (tokenizer.go, then parser.go over the tokens),
//! to hold the one-pass parser to: same selectors accepted, same trees.

use std::collections::BTreeSet;

use super::super::{MAX_KEY_LEN, Selector};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Label(String),
    Str(String),
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    In,
    Not,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    All,
    Has(String),
    LParen,
    RParen,
    And,
    Or,
    Global,
    Eof,
}

fn trim(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-')
}

fn boundary(s: &str) -> bool {
    s.as_bytes().first().is_none_or(|&c| !ident_char(c))
}

fn cut_check<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    s.strip_prefix(word).filter(|r| boundary(r))
}

fn cut_multi<'a>(s: &'a str, words: &[&str]) -> Option<&'a str> {
    let mut rest = s;
    for word in words {
        rest = trim(rest.strip_prefix(word)?);
    }
    boundary(rest).then_some(rest)
}

fn cut_ident(s: &str) -> Option<(&str, &str)> {
    let n = s.bytes().take_while(|&c| ident_char(c)).count();
    (n > 0 && n <= MAX_KEY_LEN).then(|| s.split_at(n))
}

fn tokenize(mut input: &str) -> Option<Vec<Tok>> {
    let mut toks = vec![];
    loop {
        input = trim(input);
        let Some(&c) = input.as_bytes().first() else {
            toks.push(Tok::Eof);
            return Some(toks);
        };
        let after_label = matches!(toks.last(), Some(Tok::Label(_)));
        let single = |t: Tok| Some((t, &input[1..]));
        let (tok, rest) = match c {
            b'(' => single(Tok::LParen),
            b')' => single(Tok::RParen),
            b'{' => single(Tok::LBrace),
            b'}' => single(Tok::RBrace),
            b',' => single(Tok::Comma),
            b'"' | b'\'' => {
                let body = &input[1..];
                let end = body.find(char::from(c))?;
                Some((Tok::Str(body[..end].to_owned()), &body[end + 1..]))
            }
            b'=' => Some((Tok::Eq, input.strip_prefix("==")?)),
            b'!' => match input.strip_prefix("!=") {
                Some(rest) => Some((Tok::Ne, rest)),
                None => single(Tok::Not),
            },
            b'&' => Some((Tok::And, input.strip_prefix("&&")?)),
            b'|' => Some((Tok::Or, input.strip_prefix("||")?)),
            _ if after_label => [
                (Tok::Contains, cut_check(input, "contains")),
                (Tok::StartsWith, cut_multi(input, &["starts", "with"])),
                (Tok::EndsWith, cut_multi(input, &["ends", "with"])),
                (Tok::NotIn, cut_multi(input, &["not", "in"])),
                (Tok::In, cut_check(input, "in")),
            ]
            .into_iter()
            .find_map(|(tok, rest)| rest.map(|r| (tok, r))),
            _ => {
                if let Some(rest) = input.strip_prefix("has(") {
                    let (ident, rest) = cut_ident(trim(rest))?;
                    Some((Tok::Has(ident.to_owned()), trim(rest).strip_prefix(')')?))
                } else if let Some(rest) = input.strip_prefix("all(") {
                    Some((Tok::All, trim(rest).strip_prefix(')')?))
                } else if let Some(rest) = input.strip_prefix("global(") {
                    Some((Tok::Global, trim(rest).strip_prefix(')')?))
                } else {
                    let (ident, rest) = cut_ident(input)?;
                    Some((Tok::Label(ident.to_owned()), rest))
                }
            }
        }?;
        toks.push(tok);
        input = rest;
    }
}

type Parsed<'t> = Option<(Selector, &'t [Tok])>;

pub fn parse(src: &str) -> Result<Selector, ()> {
    let toks = tokenize(src).ok_or(())?;
    if toks[0] == Tok::Eof {
        return Ok(Selector::All);
    }
    match or(&toks) {
        Some((sel, [Tok::Eof])) => Ok(sel),
        _ => Err(()),
    }
}

fn or(toks: &[Tok]) -> Parsed<'_> {
    let (first, mut rest) = and(toks)?;
    let mut operands = vec![first];
    while rest[0] == Tok::Or {
        let (next, r) = and(&rest[1..])?;
        operands.push(next);
        rest = r;
    }
    let sel = if operands.len() == 1 {
        operands.remove(0)
    } else {
        Selector::Or(operands)
    };
    Some((sel, rest))
}

fn and(toks: &[Tok]) -> Parsed<'_> {
    let (first, mut rest) = op(toks)?;
    let mut operands = vec![first];
    while rest[0] == Tok::And {
        let (next, r) = op(&rest[1..])?;
        operands.push(next);
        rest = r;
    }
    let sel = if operands.len() == 1 {
        operands.remove(0)
    } else {
        Selector::And(operands)
    };
    Some((sel, rest))
}

fn op(mut toks: &[Tok]) -> Parsed<'_> {
    let mut negated = false;
    while toks[0] == Tok::Not {
        negated = !negated;
        toks = &toks[1..];
    }
    let (sel, rest) = match &toks[0] {
        Tok::Has(key) => (Selector::Has(key.clone()), &toks[1..]),
        Tok::All => (Selector::All, &toks[1..]),
        Tok::Global => (Selector::Global, &toks[1..]),
        Tok::Label(_) if toks.len() < 3 => return None,
        Tok::Label(key) => {
            let key = key.clone();
            match (&toks[1], &toks[2]) {
                (Tok::Eq, Tok::Str(v)) => (Selector::Eq(key, v.clone()), &toks[3..]),
                (Tok::Ne, Tok::Str(v)) => (Selector::Ne(key, v.clone()), &toks[3..]),
                (Tok::Contains, Tok::Str(v)) => (Selector::Contains(key, v.clone()), &toks[3..]),
                (Tok::StartsWith, Tok::Str(v)) => {
                    (Selector::StartsWith(key, v.clone()), &toks[3..])
                }
                (Tok::EndsWith, Tok::Str(v)) => (Selector::EndsWith(key, v.clone()), &toks[3..]),
                (op @ (Tok::In | Tok::NotIn), Tok::LBrace) => {
                    let mut rest = &toks[3..];
                    let mut values = BTreeSet::new();
                    while let Tok::Str(v) = &rest[0] {
                        values.insert(v.clone());
                        rest = &rest[1..];
                        if rest[0] == Tok::Comma {
                            rest = &rest[1..];
                        } else {
                            break;
                        }
                    }
                    if rest[0] != Tok::RBrace {
                        return None;
                    }
                    let sel = if *op == Tok::In {
                        Selector::In(key, values)
                    } else {
                        Selector::NotIn(key, values)
                    };
                    (sel, &rest[1..])
                }
                _ => return None,
            }
        }
        Tok::LParen => {
            let (inner, rest) = or(&toks[1..])?;
            match rest {
                [Tok::RParen, rest @ ..] => (inner, rest),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some((
        if negated {
            Selector::Not(Box::new(sel))
        } else {
            sel
        },
        rest,
    ))
}
