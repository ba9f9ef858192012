use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

mod calico_port;

fn sel(src: &str) -> Selector {
    Selector::parse(src).unwrap_or_else(|e| panic!("{e}"))
}

/// `"k=v,j=w"` as labels (`""`: none).
fn labels(text: &str) -> BTreeMap<String, String> {
    let pairs = text.split(',').filter(|p| !p.is_empty());
    pairs
        .map(|p| p.split_once('=').map(|(k, v)| (s(k), s(v))).unwrap())
        .collect()
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn s(text: &str) -> String {
    text.to_owned()
}

fn eq(key: &str, value: &str) -> Selector {
    Selector::Eq(s(key), s(value))
}

fn has(key: &str) -> Selector {
    Selector::Has(s(key))
}

fn not(operand: Selector) -> Selector {
    Selector::Not(Box::new(operand))
}

/// Each selector, the label sets it matches and those it does not.
type Table<'a> = &'a [(&'a str, &'a [&'a str], &'a [&'a str])];

fn check_table(table: Table) {
    for (src, yes, no) in table {
        let parsed = sel(src);
        assert_eq!(sel(&parsed.to_string()), parsed, "{src} through {parsed}");
        assert_eq!(calico_port::parse(src), Ok(parsed.clone()), "{src}");
        for l in *yes {
            assert!(parsed.matches(&labels(l)), "{src} should match {l:?}");
        }
        for l in *no {
            assert!(!parsed.matches(&labels(l)), "{src} should not match {l:?}");
        }
    }
}

/// The "Selectors" table of Calico's docs (reference/resources/networkpolicy), verbatim, with
/// what each row says it matches.
#[test]
#[rustfmt::skip]
fn documented_operators() {
    check_table(&[
        ("all()", &["", "a=b"], &[]),
        ("!all()", &[], &["", "a=b"]),
        ("global()", &["", "a=b"], &[]),
        ("k == 'v'", &["k=v", "k=v,j=w"], &["", "k=w", "j=v"]),
        ("k != 'v'", &["", "k=w", "j=v"], &["k=v"]),
        ("has(k)", &["k=", "k=v"], &["", "j=k"]),
        ("!has(k)", &["", "j=k"], &["k=", "k=v"]),
        ("k in { 'v1', 'v2' }", &["k=v1", "k=v2"], &["", "k=v3", "k="]),
        ("k not in { 'v1', 'v2' }", &["", "k=v3", "k="], &["k=v1", "k=v2"]),
        ("k contains 's'", &["k=s", "k=asb"], &["", "k=ab", "j=s"]),
        ("k starts with 's'", &["k=s", "k=sab"], &["", "k=as", "j=s"]),
        ("k ends with 's'", &["k=s", "k=abs"], &["", "k=sa", "j=s"]),
    ]);
    assert!(sel("global()").is_global());
}

/// The docs' precedence example, and what they say it matches.
#[test]
fn documented_precedence_example() {
    let example =
        "! has(my-label) || my-label starts with 'prod' && role in {'frontend','business'}";
    let bracketed = "(!(has(my-label))) || \
                     ((my-label starts with 'prod') && (role in {'frontend','business'}))";
    assert_eq!(sel(example), sel(bracketed));
    let prod = Selector::StartsWith(s("my-label"), s("prod"));
    let role = Selector::In(s("role"), set(&["business", "frontend"]));
    let tree = Selector::Or(vec![not(has("my-label")), Selector::And(vec![prod, role])]);
    assert_eq!(sel(example), tree);
    check_table(&[(
        example,
        &[
            "",
            "role=db",
            "my-label=prod-1,role=frontend",
            "my-label=prod,role=business",
        ],
        &[
            "my-label=prod-1",
            "my-label=prod-1,role=db",
            "my-label=dev,role=frontend",
        ],
    )]);
    // The docs' own bracketing of it, verbatim, leaves its first two parentheses open (the
    // error names the inner one): Calico refuses it too.
    let docs_bracketed = "((!(has(my-label)) || ((my-label starts with 'prod') && (role in {'frontend','business'}))";
    let err = Selector::parse(docs_bracketed).unwrap_err();
    let unclosed = Expected::CloseParen { opened_at: 1 };
    assert_eq!(
        (err.position, err.expected),
        (docs_bracketed.len(), unclosed)
    );
    assert!(calico_port::parse(docs_bracketed).is_err());
}

/// libcalico-go's `selectorTests` (parser_test.go), every row.
#[test]
#[rustfmt::skip]
fn libcalico_go_selector_tests() {
    check_table(&[
        (r#"a == "b""#, &["a=b", "a=b,c=d"], &["", "a=c", "c=d"]),
        (r#"a == "b" && c == "d""#, &["a=b,c=d"], &["", "a=b,c=e", "a=c,c=d", "c=d", "a=b"]),
        (r#"a == "b" || c == "d""#, &["a=b,c=d", "a=b", "c=d"], &["", "a=e,c=e", "c=e", "a=e"]),
        (r#"a in {"'", '"', "c"}"#, &["a=c", "a=\"", "a='"], &["", "a=e"]),
        (r#"a not in {"'", '"', "c"}"#, &["", "a=e"], &["a=c", "a=\"", "a='"]),
        ("a == 'a'", &["a=a"], &["a=b", ""]),
        (r#"a == "a""#, &["a=a"], &[]),
        (r#"a != "b""#, &["a=a"], &[]),
        (r#"a != "a""#, &[""], &["a=a"]),
        ("a != 'a'", &[], &["a=a"]),
        (r#"a contains "a""#, &["a=a", "a=bab", "a=aaa,b=c"], &["", "a=b", "b=aaa"]),
        (r#"a starts with "a""#, &["a=a", "a=abb", "a=aaa,b=c"], &["", "a=b", "a=baa", "b=aaa"]),
        (r#"a ends with "a""#, &["a=a", "a=bba", "a=aaa,b=c"], &["", "a=b", "a=aab", "b=aaa"]),
        (r#"a in {"a"}"#, &["a=a"], &["a=b"]),
        (r#"!a in {"a"}"#, &["a=b"], &[]),
        (r#"a in {"a", "b"}"#, &["a=a", "a=b"], &["a=c"]),
        (r#"a not in {"d", "e"}"#, &["a=a"], &[]),
        (r#"a not in {"a"}"#, &[], &["a=a"]),
        ("has(a)", &["a=b"], &[]),
        ("!has(a)", &["b=b"], &["a=b"]),
        ("", &["", "a=b"], &[]),
        (" ", &[""], &[]),
        ("all()", &[""], &[]),
        (" all()", &["", "a=b"], &[]),
        ("global()", &[""], &[]),
        (" global()", &["", "a=b"], &[]),
        ("has(b)", &[], &["a=b"]),
        ("!!has(b)", &[], &["a=b"]),
        ("! has(a)", &[], &["a=b"]),
        ("!!! has(a)", &[], &["a=b"]),
        ("!!!has(a)", &[], &["a=b"]),
        ("!! ! has(a)", &[], &["a=b"]),
        ("! !!has(a)", &[], &["a=b"]),
        ("a == 'a1' && b == 'b1'", &["a=a1,b=b1"], &[]),
        ("a == 'a1' && b != 'b1'", &[], &["a=a1,b=b1"]),
        ("a != 'a1' && b == 'b1'", &[], &["a=a1,b=b1"]),
        ("a != 'a1' && b != 'b1'", &[], &["a=a1,b=b1"]),
        ("a != 'a1' && !b == 'b1'", &[], &["a=a1,b=b1"]),
        ("!a == 'a1' && b == 'b1'", &[], &["a=a1,b=b1"]),
        ("has(a) && !has(b)", &["a=a"], &[]),
        ("!has(b) && has(a)", &["a=a"], &[]),
        ("!(!has(a) || has(b))", &["a=a"], &[]),
        ("!(has(b) || !has(a))", &["a=a"], &[]),
        ("a == 'a1' || b == 'b1'", &["a=a1,b=b1"], &[]),
        ("a == 'a1' || b != 'b1'", &["a=a1,b=b1"], &[]),
        ("a != 'a1' || b == 'b1'", &["a=a1,b=b1"], &[]),
        ("a != 'a1' || b != 'b1'", &[], &["a=a1,b=b1"]),
        ("! a == 'a1' || ! b == 'b1'", &[], &["a=a1,b=b1"]),
    ]);
}

/// libcalico-go's `badSelectors` (parser_test.go), and a few more it refuses.
#[test]
fn libcalico_go_bad_selectors() {
    let bad = [
        "b == b",
        "b contains b",
        "b starts with b",
        "b ends with b",
        "'b1' == b",
        "b",
        "a b",
        "!",
        r#"foo == "bar" &"#,
        r#"foo == "bar" |"#,
        "foo != ||",
        r#"foo in {"", ||"#,
        r#"foo in """#,
        r#""FOO"#,
        r#""FOO'"#,
        "'FOO",
        "(",
        r#"(a == "foo""#,
        ")",
        "()",
        "%",
        r#"a == "b" && %"#,
        r#"a == "b" || %"#,
        "a ",
        "has(foo) &&",
        // Beyond Calico's list: a newline, `has (`, `!=` as an operation, a lone `=`, an
        // operator word run into more, `starts` without `with`, an argument to all().
        "has(a)\n",
        "has (a)",
        "!= 'a'",
        "a = 'b'",
        "a inx {}",
        "a starts 'x'",
        "all( x)",
    ];
    for src in bad {
        assert!(Selector::parse(src).is_err(), "{src:?} parsed");
        assert!(calico_port::parse(src).is_err(), "the port parsed {src:?}");
    }
}

/// libcalico-go's `canonicalisationTests`: its `String()` is our `Display`.
#[test]
fn libcalico_go_canonical_form() {
    for (input, canonical) in [
        ("", "all()"),
        (" all() ", "all()"),
        (" (all() )", "all()"),
        ("! (has( b)||! has(a ))", "!(has(b) || !has(a))"),
        (r#"! (a == "b"&&! c != "d")"#, r#"!(a == "b" && !c != "d")"#),
        (r#"a == "'""#, r#"a == "'""#),
        (r#"a == '"'"#, r#"a == '"'"#),
        (r#"a contains '"'"#, r#"a contains '"'"#),
        (r#"a contains "'""#, r#"a contains "'""#),
        (r#"a startswith '"'"#, r#"a starts with '"'"#),
        (r#"a endswith "'""#, r#"a ends with "'""#),
        (r#"a!='"'"#, r#"a != '"'"#),
        (r#"a in {"d"}"#, r#"a in {"d"}"#),
        (r#"a in {"d", "a", "b"}"#, r#"a in {"a", "b", "d"}"#),
        (
            r#"a in {"z", "z", "x", "y", "x", "a"}"#,
            r#"a in {"a", "x", "y", "z"}"#,
        ),
        // From its Visitor tests.
        ("k == 'v' && x == 'y'", r#"(k == "v" && x == "y")"#),
        ("!(k == 'v')", r#"!k == "v""#),
        (
            "!(!(k == 'v' && has(t) || all()) && (a in {'b', 'c'}))",
            r#"!(!((k == "v" && has(t)) || all()) && a in {"b", "c"})"#,
        ),
    ] {
        let parsed = sel(input);
        assert_eq!(parsed.to_string(), canonical, "{input}");
        assert_eq!(sel(canonical), parsed, "{canonical}");
    }
}

/// The seed's host-protection policies (shared/seeds/004).
#[test]
fn seed_host_protection_selector() {
    let selector = sel("has(host-endpoint)");
    assert_eq!(selector, has("host-endpoint"));
    assert!(selector.matches(&labels("host-endpoint=")));
    assert!(!selector.matches(&labels("kubernetes.io/hostname=node-1")));
}

#[test]
fn precedence_and_associativity() {
    let (a, b, c) = (eq("a", "1"), eq("b", "2"), eq("c", "3"));
    let and = |v: &[&Selector]| Selector::And(v.iter().map(|s| (*s).clone()).collect());
    let or = |v: &[&Selector]| Selector::Or(v.iter().map(|s| (*s).clone()).collect());
    for (src, tree) in [
        (
            "a == '1' || b == '2' && c == '3'",
            or(&[&a, &and(&[&b, &c])]),
        ),
        (
            "a == '1' && b == '2' || c == '3'",
            or(&[&and(&[&a, &b]), &c]),
        ),
        (
            "(a == '1' || b == '2') && c == '3'",
            and(&[&or(&[&a, &b]), &c]),
        ),
        ("!a == '1' && b == '2'", and(&[&not(a.clone()), &b])),
        ("!(a == '1' && b == '2')", not(and(&[&a, &b]))),
        (
            "!a == '1' || !b == '2'",
            or(&[&not(a.clone()), &not(b.clone())]),
        ),
        ("a == '1' && b == '2' && c == '3'", and(&[&a, &b, &c])),
        (
            "(a == '1' && b == '2') && c == '3'",
            and(&[&and(&[&a, &b]), &c]),
        ),
        (
            "a == '1' && (b == '2' && c == '3')",
            and(&[&a, &and(&[&b, &c])]),
        ),
        ("a == '1' || b == '2' || c == '3'", or(&[&a, &b, &c])),
        (
            "a == '1' || (b == '2' || c == '3')",
            or(&[&a, &or(&[&b, &c])]),
        ),
        ("((a == '1'))", a.clone()),
        ("!!a == '1'", a.clone()),
        ("!!!a == '1'", not(a.clone())),
        ("!(!a == '1')", not(not(a.clone()))),
        ("!(!(a == '1'))", not(not(a.clone()))),
    ] {
        let parsed = sel(src);
        assert_eq!(parsed, tree, "{src}");
        assert_eq!(sel(&parsed.to_string()), tree, "{src} printed as {parsed}");
    }
    assert_eq!(sel("!(!has(a))").to_string(), "!(!has(a))");
}

#[test]
fn quoting() {
    assert_eq!(sel("a == 'b'"), eq("a", "b"));
    assert_eq!(sel(r#"a == "b""#), eq("a", "b"));
    assert_eq!(sel(r#"a == "it's""#), eq("a", "it's"));
    assert_eq!(sel(r#"a == 'say "hi"'"#), eq("a", r#"say "hi""#));
    // No escapes: a backslash is a character like any other.
    assert_eq!(sel(r#"a == "b\""#), eq("a", "b\\"));
    assert_eq!(sel(r#"a == """#), eq("a", ""));
    assert!(sel("a == ''").matches(&labels("a=")));
    assert!(!sel("a == ''").matches(&labels("")));
    assert_eq!(
        sel("a == 'ünï cödé && || ()'"),
        eq("a", "ünï cödé && || ()")
    );
    assert_eq!(eq("a", r#"say "hi""#).to_string(), r#"a == 'say "hi"'"#);
    assert_eq!(eq("a", "it's").to_string(), r#"a == "it's""#);
}

#[test]
fn whitespace_and_spelling() {
    let b = eq("a", "b");
    for src in [
        r#"a=="b""#,
        "\ta\t==\t'b'\t",
        "  a  ==  'b'  ",
        "(a == 'b')",
        "( a == 'b' )",
    ] {
        assert_eq!(sel(src), b, "{src:?}");
    }
    assert_eq!(sel("has( a )"), has("a"));
    assert_eq!(sel("has(\ta)"), has("a"));
    assert_eq!(sel("all( )"), Selector::All);
    assert_eq!(sel("global(\t)"), Selector::Global);
    for src in ["", " ", "\t \t"] {
        assert_eq!(sel(src), Selector::All, "{src:?}");
    }
    let starts = Selector::StartsWith(s("a"), s("x"));
    for src in [
        "a starts with 'x'",
        "a startswith 'x'",
        "a starts \t with'x'",
        "a starts with'x'",
    ] {
        assert_eq!(sel(src), starts, "{src:?}");
    }
    assert_eq!(sel("a endswith 'x'"), Selector::EndsWith(s("a"), s("x")));
    assert_eq!(sel("a contains'x'"), Selector::Contains(s("a"), s("x")));
    let not_in = Selector::NotIn(s("a"), set(&["x"]));
    for src in [
        "a not in {'x'}",
        "a notin {'x'}",
        "a not\tin{'x'}",
        "a not in{ 'x' , }",
    ] {
        assert_eq!(sel(src), not_in, "{src:?}");
    }
    assert_eq!(sel("a in{'x'}"), Selector::In(s("a"), set(&["x"])));
    assert_eq!(
        sel(r#"a=="b"&&c!="d"||!has(e)"#).to_string(),
        r#"((a == "b" && c != "d") || !has(e))"#
    );
}

#[test]
fn label_keys() {
    for key in [
        "app",
        "app.kubernetes.io/name",
        "projectcalico.org/namespace",
        "my_key-1.x",
        "1a",
        "A_b",
        // Words that are operators elsewhere are keys where a key is expected.
        "in",
        "not",
        "has",
        "all",
        "global",
        "contains",
        "starts",
        "with",
        // Calico is looser than Kubernetes.
        "a/b/c",
        "-a",
        "./",
    ] {
        assert_eq!(sel(&format!("{key} == 'v'")), eq(key, "v"), "{key}");
        assert_eq!(sel(&format!("has({key})")), has(key), "{key}");
    }
    assert_eq!(
        sel("contains contains 'contains'"),
        Selector::Contains(s("contains"), s("contains"))
    );
    assert_eq!(
        sel("not not in {'x'}"),
        Selector::NotIn(s("not"), set(&["x"]))
    );
    let longest = "k".repeat(MAX_KEY_LEN);
    assert_eq!(sel(&format!("has({longest})")), has(&longest));
    let err = Selector::parse(&format!("{longest}x == 'v'")).unwrap_err();
    assert_eq!(
        (err.position, err.expected),
        (
            0,
            Expected::ShorterKey {
                len: MAX_KEY_LEN + 1
            }
        )
    );
}

#[test]
fn sets() {
    assert_eq!(
        sel("a in {'b', \"a\", 'b'}"),
        Selector::In(s("a"), set(&["a", "b"]))
    );
    assert_eq!(sel("a in {'b',}"), Selector::In(s("a"), set(&["b"])));
    assert_eq!(sel("a in {}"), Selector::In(s("a"), set(&[])));
    assert_eq!(sel("a in { }").to_string(), "a in {}");
    assert!(!sel("a in {}").matches(&labels("a=")));
    assert!(sel("a not in {}").matches(&labels("a=")));
    assert!(sel("a not in {}").matches(&labels("")));
    assert_eq!(
        sel("a not in {'z', 'y'}").to_string(),
        r#"a not in {"y", "z"}"#
    );
}

/// Absent labels: only `!=` and `not in` (and negations) match.
#[test]
fn absent_labels() {
    let none = labels("other=v");
    for (src, matches) in [
        ("k == 'v'", false),
        ("k != 'v'", true),
        ("k in {'v'}", false),
        ("k not in {'v'}", true),
        ("k contains ''", false),
        ("k starts with ''", false),
        ("k ends with ''", false),
        ("has(k)", false),
        ("!has(k)", true),
        ("!k == 'v'", true),
        ("!k != 'v'", false),
        ("!k contains ''", true),
    ] {
        assert_eq!(sel(src).matches(&none), matches, "{src}");
    }
    // Present with an empty value is present: the empty substring is in it.
    let empty = labels("k=");
    for src in [
        "k contains ''",
        "k starts with ''",
        "k ends with ''",
        "k != 'v'",
        "has(k)",
    ] {
        assert!(sel(src).matches(&empty), "{src}");
    }
    // Case-sensitive, byte for byte.
    assert!(!sel("k == 'V'").matches(&labels("k=v")));
    assert!(!sel("K == 'v'").matches(&labels("k=v")));
}

#[test]
fn error_positions() {
    let cases: &[(&str, usize, usize, Expected)] = &[
        ("app == ", 7, 8, Expected::QuotedValue),
        ("app = 'x'", 4, 5, Expected::Token("==")),
        ("app", 3, 4, Expected::Operator { key: s("app") }),
        ("app starts 'x'", 4, 5, Expected::Operator { key: s("app") }),
        (
            "app == \"x",
            9,
            10,
            Expected::ClosingQuote {
                quote: '"',
                opened_at: 7,
            },
        ),
        (
            "app in {'x",
            10,
            11,
            Expected::ClosingQuote {
                quote: '\'',
                opened_at: 8,
            },
        ),
        ("has(app", 7, 8, Expected::Token(")")),
        ("has()", 4, 5, Expected::Key),
        ("has (app)", 4, 5, Expected::Operator { key: s("has") }),
        ("all(x)", 4, 5, Expected::Token(")")),
        ("(a == 'b'", 9, 10, Expected::CloseParen { opened_at: 0 }),
        (
            "has(a) && (a == 'b' c)",
            20,
            21,
            Expected::CloseParen { opened_at: 10 },
        ),
        ("a == 'b')", 8, 9, Expected::AndOrEnd),
        ("a == 'b' & c == 'd'", 9, 10, Expected::Token("&&")),
        ("a == 'b' | c == 'd'", 9, 10, Expected::Token("||")),
        ("a in 'b'", 5, 6, Expected::SetOpen),
        ("a in {'b' 'c'}", 10, 11, Expected::CommaOrClose),
        ("a in {,}", 6, 7, Expected::SetValueOrClose),
        ("a in {'b',", 10, 11, Expected::SetValueOrClose),
        ("a == 'b' &&", 11, 12, Expected::Expression),
        ("!", 1, 2, Expected::Expression),
        ("!= 'a'", 0, 1, Expected::Expression),
        ("%", 0, 1, Expected::Expression),
        ("has(a)\n", 6, 7, Expected::AndOrEnd),
        ("é == 'x'", 0, 1, Expected::Expression),
        // Position counts bytes, column characters.
        ("a == 'é' || %", 13, 13, Expected::Expression),
    ];
    for (src, position, column, expected) in cases {
        let err = Selector::parse(src).unwrap_err();
        assert_eq!(
            (err.position, err.column, &err.expected),
            (*position, *column, expected),
            "{src:?}"
        );
        assert_eq!(err.selector, *src);
    }
    for (expected, text) in [
        (
            Expected::ShorterKey { len: 513 },
            "a label key of at most 512 characters, not 513",
        ),
        (Expected::ShallowerNesting, "at most 256 nested parentheses"),
        (Expected::SetOpen, "`{` opening a set of quoted values"),
        (Expected::CommaOrClose, "`,` or `}`"),
        (Expected::Token("&&"), "`&&`"),
    ] {
        assert_eq!(expected.to_string(), text);
    }
    assert_eq!(
        Selector::parse("app == ").unwrap_err().to_string(),
        r#"selector "app == " at position 7 (column 8): expected a quoted value"#
    );
    assert_eq!(
        Selector::parse("app").unwrap_err().to_string(),
        r#"selector "app" at position 3 (column 4): expected an operator after label key "app": ==, !=, in, not in, contains, starts with or ends with"#
    );
}

/// The deepest tree a selector may make (two levels per parenthesis) is printed, compared,
/// matched and dropped on a test thread's stack; one more parenthesis is refused, and no
/// input makes the parser itself recurse.
#[test]
fn nesting_is_bounded_not_a_stack_overflow() {
    let n = MAX_NESTING;
    let deepest = format!("{}has(a){}", "!(has(b) && ".repeat(n), ")".repeat(n));
    let parsed = sel(&deepest);
    assert_eq!(sel(&parsed.to_string()), parsed);
    assert_eq!(parsed.clone(), parsed);
    assert!(format!("{parsed:?}").len() > deepest.len());
    assert_eq!(parsed.matches(&labels("a=,b=")), n.is_multiple_of(2));
    assert_eq!(parsed.labels_used(), set(&["a", "b"]));
    drop(parsed);
    let deeper = format!("{}has(a){}", "(".repeat(n + 1), ")".repeat(n + 1));
    let err = Selector::parse(&deeper).unwrap_err();
    assert_eq!(
        (err.position, err.expected),
        (n, Expected::ShallowerNesting)
    );
    assert!(Selector::parse(&"(".repeat(100_000)).is_err());
    assert!(Selector::parse(&"!(".repeat(100_000)).is_err());
    // A run of `!` is folded, not nested.
    assert_eq!(
        sel(&format!("{}has(a)", "!".repeat(100_001))),
        not(has("a"))
    );
}

#[test]
fn labels_used() {
    let keys = |src: &str| sel(src).labels_used().into_iter().collect::<Vec<_>>();
    assert_eq!(
        keys("a == 'x' && (has(b) || !c in {'y'}) || all() || d not in {}"),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        keys("e contains 'x' || f starts with 'y' && g ends with 'z' || h != 'w'"),
        ["e", "f", "g", "h"]
    );
    assert!(keys("all()").is_empty());
    assert!(keys("global()").is_empty());
    assert!(keys("").is_empty());
}

#[test]
fn global_rules() {
    let global = sel("global()");
    assert_eq!(global, Selector::Global);
    assert!(global.is_global() && global.uses_global());
    assert_eq!(global.check_global(Field::RuleNamespaceSelector), Ok(()));
    assert_eq!(
        global.check_global(Field::Other),
        Err(GlobalMisuse::OutsideNamespaceSelector)
    );
    let mixed = sel("global() || has(a)");
    assert!(!mixed.is_global() && mixed.uses_global());
    assert_eq!(
        mixed.check_global(Field::RuleNamespaceSelector),
        Err(GlobalMisuse::NotAlone)
    );
    assert_eq!(
        sel("!global()").check_global(Field::RuleNamespaceSelector),
        Err(GlobalMisuse::NotAlone)
    );
    assert_eq!(sel("has(a)").check_global(Field::Other), Ok(()));
    assert_eq!(sel("a == 'global()'").check_global(Field::Other), Ok(()));
    assert_eq!(
        GlobalMisuse::OutsideNamespaceSelector.to_string(),
        "global() can only be used in an EntityRule namespaceSelector"
    );
    assert_eq!(
        GlobalMisuse::NotAlone.to_string(),
        "global() cannot be combined with other selectors"
    );
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "app.kubernetes.io/name", "in", "has", "not"]).prop_map(s),
        1 => "[a-zA-Z0-9_./-]{1,6}",
    ]
}

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["", "x", "xy", "y", "it's", "say \"x\""]).prop_map(s),
        1 => "[xy'\" é&|(){},!=]{0,4}".prop_filter("one quote kind", |v| !(v.contains('"') && v.contains('\''))),
    ]
}

fn arb_selector() -> impl Strategy<Value = Selector> {
    let leaf = prop_oneof![
        Just(Selector::All),
        Just(Selector::Global),
        arb_key().prop_map(Selector::Has),
        (arb_key(), arb_value()).prop_map(|(k, v)| Selector::Eq(k, v)),
        (arb_key(), arb_value()).prop_map(|(k, v)| Selector::Ne(k, v)),
        (arb_key(), arb_value()).prop_map(|(k, v)| Selector::Contains(k, v)),
        (arb_key(), arb_value()).prop_map(|(k, v)| Selector::StartsWith(k, v)),
        (arb_key(), arb_value()).prop_map(|(k, v)| Selector::EndsWith(k, v)),
        (arb_key(), prop::collection::btree_set(arb_value(), 0..3))
            .prop_map(|(k, v)| Selector::In(k, v)),
        (arb_key(), prop::collection::btree_set(arb_value(), 0..3))
            .prop_map(|(k, v)| Selector::NotIn(k, v)),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Selector::And),
            prop::collection::vec(inner, 2..4).prop_map(Selector::Or),
        ]
    })
}

/// Writes a tree the way a person might: varied whitespace, quotes, spellings and redundant
/// parentheses, and only the parentheses the tree needs (so precedence is what is tested).
struct Noisy<'a> {
    style: std::iter::Cycle<std::slice::Iter<'a, u8>>,
    out: String,
}

impl Noisy<'_> {
    fn pick(&mut self, n: u8) -> u8 {
        self.style.next().copied().unwrap_or(0) % n
    }

    fn ws(&mut self) {
        let ws = ["", "", " ", "\t", "  "][usize::from(self.pick(5))];
        self.out.push_str(ws);
    }

    fn ws1(&mut self) {
        let ws = [" ", "\t", " \t"][usize::from(self.pick(3))];
        self.out.push_str(ws);
    }

    fn quoted(&mut self, v: &str) {
        let q = if v.contains('"') || (!v.contains('\'') && self.pick(2) == 0) {
            '\''
        } else {
            '"'
        };
        self.out.push(q);
        self.out.push_str(v);
        self.out.push(q);
    }

    fn words(&mut self, first: &str, second: &str) {
        self.out.push_str(first);
        if self.pick(3) == 0 {
            self.ws()
        } else {
            self.ws1()
        }
        self.out.push_str(second);
    }

    fn write(&mut self, sel: &Selector, needs_parens: bool) {
        let parens = needs_parens || self.pick(8) == 0;
        if parens {
            self.out.push('(');
            self.ws();
        }
        match sel {
            Selector::All => self.call("all(", None),
            Selector::Global => self.call("global(", None),
            Selector::Has(k) => self.call("has(", Some(k)),
            Selector::Eq(k, v) => self.binary(k, "==", v),
            Selector::Ne(k, v) => self.binary(k, "!=", v),
            Selector::Contains(k, v) => self.keyword(k, |n| n.out.push_str("contains"), v),
            Selector::StartsWith(k, v) => self.keyword(k, |n| n.words("starts", "with"), v),
            Selector::EndsWith(k, v) => self.keyword(k, |n| n.words("ends", "with"), v),
            Selector::In(k, vs) => self.set(k, |n| n.out.push_str("in"), vs),
            Selector::NotIn(k, vs) => self.set(k, |n| n.words("not", "in"), vs),
            Selector::Not(inner) => {
                self.out.push('!');
                self.ws();
                let group = matches!(
                    **inner,
                    Selector::Not(_) | Selector::And(_) | Selector::Or(_)
                );
                self.write(inner, group);
            }
            Selector::And(ops) | Selector::Or(ops) => {
                let is_and = matches!(sel, Selector::And(_));
                for (i, op) in ops.iter().enumerate() {
                    if i > 0 {
                        self.ws();
                        self.out.push_str(if is_and { "&&" } else { "||" });
                        self.ws();
                    }
                    let group =
                        matches!(op, Selector::Or(_)) || (is_and && matches!(op, Selector::And(_)));
                    self.write(op, group);
                }
            }
        }
        if parens {
            self.ws();
            self.out.push(')');
        }
    }

    fn call(&mut self, name: &str, key: Option<&str>) {
        self.out.push_str(name);
        self.ws();
        if let Some(key) = key {
            self.out.push_str(key);
            self.ws();
        }
        self.out.push(')');
    }

    fn binary(&mut self, k: &str, op: &str, v: &str) {
        self.out.push_str(k);
        self.ws();
        self.out.push_str(op);
        self.ws();
        self.quoted(v);
    }

    fn keyword(&mut self, k: &str, op: impl FnOnce(&mut Self), v: &str) {
        self.out.push_str(k);
        self.ws1();
        op(self);
        self.ws();
        self.quoted(v);
    }

    fn set(&mut self, k: &str, op: impl FnOnce(&mut Self), vs: &BTreeSet<String>) {
        self.out.push_str(k);
        self.ws1();
        op(self);
        self.ws();
        self.out.push('{');
        // Reversed and with a repeat: the set sorts and deduplicates.
        let mut values: Vec<&String> = vs.iter().rev().collect();
        if let Some(first) = values.first().copied().filter(|_| self.pick(2) == 0) {
            values.push(first);
        }
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.ws();
                self.out.push(',');
            }
            self.ws();
            self.quoted(v);
        }
        if !values.is_empty() && self.pick(3) == 0 {
            self.out.push(',');
        }
        self.ws();
        self.out.push('}');
    }
}

fn noisy(sel: &Selector, style: &[u8]) -> String {
    let fallback = [0u8];
    let style = if style.is_empty() {
        &fallback[..]
    } else {
        style
    };
    let mut n = Noisy {
        style: style.iter().cycle(),
        out: String::new(),
    };
    n.ws();
    n.write(sel, false);
    n.ws();
    n.out
}

/// The same verdict as libcalico-go's two passes, and an error that points inside the input.
fn agrees_with_calico(src: &str) -> Result<(), TestCaseError> {
    let ours = Selector::parse(src);
    let theirs = calico_port::parse(src);
    prop_assert_eq!(
        ours.as_ref().ok(),
        theirs.as_ref().ok(),
        "{:?}: {:?}",
        src,
        ours
    );
    match ours {
        Ok(parsed) => prop_assert_eq!(Selector::parse(&parsed.to_string()), Ok(parsed)),
        Err(err) => {
            prop_assert!(err.position <= src.len());
            let before = src.get(..err.position).map(|s| s.chars().count());
            prop_assert_eq!(before.map(|n| n + 1), Some(err.column));
            prop_assert!(err.to_string().contains("at position"));
        }
    }
    Ok(())
}

const FRAGMENTS: &[&str] = &[
    "a", "b", "k8s.io/x", "has(", "all(", "global(", "(", ")", "!", "!=", "==", "=", "&&", "&",
    "||", "|", " ", " ", "\t", "\"v\"", "'w'", "\"", "'", "in", "not", "contains", "starts",
    "with", "ends", "{", "}", ",", "é", "\n", "%", "with'x'",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn noisy_text_parses_to_its_tree(tree in arb_selector(), style in prop::collection::vec(any::<u8>(), 1..64)) {
        let text = noisy(&tree, &style);
        prop_assert_eq!(Selector::parse(&text), Ok(tree.clone()), "{:?}", text);
        prop_assert_eq!(calico_port::parse(&text), Ok(tree.clone()), "{:?}", text);
        let canonical = tree.to_string();
        prop_assert_eq!(Selector::parse(&canonical), Ok(tree.clone()), "{:?}", canonical);
        prop_assert_eq!(calico_port::parse(&canonical), Ok(tree), "{:?}", canonical);
    }

    #[test]
    fn mutated_text_agrees_with_calico(
        tree in arb_selector(),
        style in prop::collection::vec(any::<u8>(), 1..64),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(FRAGMENTS)), 1..4),
    ) {
        let mut chars: Vec<char> = noisy(&tree, &style).chars().collect();
        for (at, kind, fragment) in edits {
            let i = at.index(chars.len() + 1);
            match kind {
                0 if i < chars.len() => { chars.remove(i); }
                1 if i < chars.len() => { chars.splice(i..=i, fragment.chars()); }
                _ => { chars.splice(i..i, fragment.chars()); }
            }
        }
        agrees_with_calico(&chars.into_iter().collect::<String>())?;
    }

    #[test]
    fn fragments_agree_with_calico(parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..14)) {
        agrees_with_calico(&parts.concat())?;
    }

    #[test]
    fn any_text_agrees_with_calico(text in "\\PC{0,40}") {
        agrees_with_calico(&text)?;
    }

    #[test]
    fn only_used_labels_matter(
        tree in arb_selector(),
        present in prop::collection::btree_map(arb_key(), arb_value(), 0..5),
        extra in prop::collection::btree_map("[a-z]{1,3}", arb_value(), 0..3),
    ) {
        let used = tree.labels_used();
        let mut more = present.clone();
        more.extend(extra.into_iter().filter(|(k, _)| !used.contains(k)));
        prop_assert_eq!(tree.matches(&present), tree.matches(&more));
    }
}
