//! `enforcer events`: the verdict events of a node's agent, for people (text) and machines
//! (JSON lines), filtered by namespace, pod, direction, verdict, policy, either end of the flow,
//! port and time.
//!
//! The agent names every event as it reads it from the ring buffer and appends it as one JSON
//! object per line to its events file (rotated by size to `FILE.1`); any number of readers
//! follow that file at once. The filters ([`filter`]) and the text format are pure and tested
//! here; reading and following ([`read`]) is a thin loop that survives rotation and refuses a
//! file that is not an event stream.

pub mod filter;
pub mod loss;
pub mod read;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use jiff::Timestamp;
use jiff::tz::TimeZone;

pub use filter::{Direction, Filter, Peer, Since, Verdict, event_time};
pub use read::{NotAnEvent, Reading, stream};

/// An event line as the agent writes it.
pub use crate::agent::EventRecord as EventLine;

/// A time as RFC 3339 with its zone's offset, to the millisecond (`2026-12-02T18:31:07.123+00:00`).
pub fn rfc3339_ms(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string()
}

/// A Unix time in nanoseconds as RFC 3339 in UTC, to the nanosecond (the events file's `time`).
pub fn rfc3339_ns(unix_ns: u64) -> String {
    match Timestamp::from_nanosecond(i128::from(unix_ns)) {
        Ok(t) => t
            .to_zoned(TimeZone::UTC)
            .strftime("%Y-%m-%dT%H:%M:%S%.9f%:z")
            .to_string(),
        Err(_) => String::new(),
    }
}

/// One line for people: when (RFC 3339 in `tz`; seconds since boot for lines without a
/// wall-clock time), what happened, to whom, between which peers, and why.
pub fn render(e: &EventLine, tz: &TimeZone) -> String {
    let when = match event_time(e) {
        Some(t) => rfc3339_ms(t, tz),
        None => format!(
            "{}.{:03}",
            e.time_ns / 1_000_000_000,
            (e.time_ns / 1_000_000) % 1000
        ),
    };
    let ep = e.endpoint.as_deref().unwrap_or("?");
    let peer = match (&e.peer, e.peer_blocks.is_empty()) {
        (Some(p), _) => p.clone(),
        (None, false) => format!("ipBlock {}", e.peer_blocks.join(" | ")),
        (None, true) => "outside the cluster".to_string(),
    };
    let arrow = if e.direction == "ingress" { "<-" } else { "->" };
    let why = match (e.verdict.as_str(), e.reason.as_str()) {
        (_, "no-rule-allows") if !e.isolated_by.is_empty() => format!(
            "no rule allows it; isolated by {}",
            e.isolated_by.join(", ")
        ),
        (_, "audit-would-drop") => format!(
            "would be dropped by {} (audit mode: passed)",
            e.isolated_by.join(", ")
        ),
        (_, r) => match (&e.policy, e.rule, &e.tier) {
            (Some(p), Some(rule), Some(t)) if t != "NetworkPolicy" => {
                format!("{r} ({t} tier: {p}, rule {rule})")
            }
            (Some(p), Some(rule), _) => format!("{r} ({p}, rule {rule})"),
            _ => r.to_string(),
        },
    };
    format!(
        "{when} {node} {verdict:<5} {dir:<7} {ep} {arrow} {peer}  {proto} {src}:{sp} > {dst}:{dp}  {why}",
        node = e.node,
        verdict = e.verdict,
        dir = e.direction,
        proto = e.protocol,
        src = e.src,
        sp = e.src_port,
        dst = e.dst,
        dp = e.dst_port,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `enforcer events`: its arguments, validated as they are parsed.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// The agent's events file (`enforcer run --events-file`); its rotated `FILE.1` is read
    /// first.
    #[arg(long, env = "ENFORCER_EVENTS_FILE")]
    pub file: PathBuf,
    /// Keep printing new events as they come (across rotations), until interrupted. Starts at
    /// the end of the file unless --since or --last asks for earlier events.
    #[arg(long, short)]
    pub follow: bool,
    /// Only events of endpoints in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only events of this endpoint (namespace/name, or name).
    #[arg(long)]
    pub pod: Option<String>,
    /// ingress (or in), egress (or out).
    #[arg(long, ignore_case = true, value_parser = Direction::parser())]
    pub direction: Option<Direction>,
    /// drop (or deny), allow or audit.
    #[arg(long, ignore_case = true, value_parser = Verdict::parser())]
    pub verdict: Option<Verdict>,
    /// Only events decided by, or isolated by, this policy (namespace/name).
    #[arg(long)]
    pub policy: Option<String>,
    /// Only flows from this source: a pod (namespace/name), an IP address or a CIDR.
    #[arg(long)]
    pub from: Option<Peer>,
    /// Only flows to this destination: a pod (namespace/name), an IP address or a CIDR.
    #[arg(long)]
    pub to: Option<Peer>,
    /// Only flows to this destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only events since then: a duration back from now (10m, 1h30m) or an RFC 3339 time with
    /// its zone (2026-12-02T18:00:00Z).
    #[arg(long)]
    pub since: Option<Since>,
    /// Only the last N matching events (then, with --follow, every new one).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

impl EventsArgs {
    /// The filter, with --since resolved against `now`.
    pub fn filter(&self, now: Timestamp) -> Filter {
        Filter {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            direction: self.direction,
            verdict: self.verdict,
            policy: self.policy.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            port: self.port,
            since: self.since.map(|s| s.cutoff(now)),
        }
    }

    pub fn reading(&self) -> Reading {
        Reading {
            follow: self.follow,
            from_end: self.follow && self.since.is_none() && self.last.is_none(),
            last: self.last,
        }
    }
}

/// Runs `enforcer events`: times in the local zone (TZ, else /etc/localtime, else UTC). A
/// reader that went away (`| head`) ends it quietly.
pub fn run(a: &EventsArgs, out: &mut dyn Write) -> Result<()> {
    let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
    let r = stream(
        &a.file,
        &a.filter(Timestamp::now()),
        a.output,
        &tz,
        a.reading(),
        out,
    );
    match r {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    /// An ingress drop at x/b from x/a, 10.0.0.1:40000 > 10.0.0.2:80, at
    /// 2023-11-14T22:13:20.123Z.
    pub(crate) fn ev() -> EventLine {
        EventLine {
            time: "2023-11-14T22:13:20.123000000+00:00".into(),
            time_ns: 5_000_123_000_000,
            unix_time_ns: 1_700_000_000_123_000_000,
            node: "node-1".into(),
            endpoint: Some("x/b".into()),
            direction: "ingress".into(),
            verdict: "drop".into(),
            reason: "no-rule-allows".into(),
            protocol: "TCP".into(),
            src: "10.0.0.1".into(),
            src_port: 40000,
            dst: "10.0.0.2".into(),
            dst_port: 80,
            peer: Some("x/a".into()),
            peer_blocks: vec![],
            policy: None,
            rule: None,
            tier: None,
            isolated_by: vec!["x/deny".into(), "x/allow-c".into()],
        }
    }

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("enforcer-events-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn text_names_time_endpoint_peer_tuple_and_why() {
        let t = render(&ev(), &TimeZone::UTC);
        assert!(
            t.starts_with("2023-11-14T22:13:20.123+00:00 node-1 drop  ingress x/b <- x/a"),
            "{t}"
        );
        assert!(t.contains("TCP 10.0.0.1:40000 > 10.0.0.2:80"), "{t}");
        assert!(
            t.ends_with("no rule allows it; isolated by x/deny, x/allow-c"),
            "{t}"
        );
        let paris = TimeZone::fixed(jiff::tz::offset(1));
        assert!(
            render(&ev(), &paris).starts_with("2023-11-14T23:13:20.123+01:00 "),
            "the reader's zone"
        );
        // A line of an agent that wrote no wall-clock time: seconds since boot.
        let mut e = ev();
        e.unix_time_ns = 0;
        e.time = String::new();
        assert!(render(&e, &TimeZone::UTC).starts_with("5000.123 node-1 "));
        // Only the RFC 3339 time.
        e.time = "2023-11-14T22:13:20.123456789+00:00".into();
        assert!(render(&e, &TimeZone::UTC).starts_with("2023-11-14T22:13:20.123+00:00 "));

        let mut e = ev();
        e.peer = None;
        e.peer_blocks = vec!["192.0.2.0/24 except 192.0.2.128/25".into()];
        e.reason = "denied-by-rule".into();
        e.policy = Some("x/p".into());
        e.rule = Some(2);
        let t = render(&e, &TimeZone::UTC);
        assert!(
            t.contains("<- ipBlock 192.0.2.0/24 except 192.0.2.128/25"),
            "{t}"
        );
        assert!(t.ends_with("denied-by-rule (x/p, rule 2)"), "{t}");
    }

    #[test]
    fn the_file_carries_rfc3339_time_with_its_zone() {
        assert_eq!(
            rfc3339_ns(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789+00:00"
        );
        let mut e = ev();
        e.unix_time_ns = 0;
        assert_eq!(event_time(&e), event_time(&ev()));
    }

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        a: EventsArgs,
    }

    fn parse(args: &[&str]) -> Result<EventsArgs, String> {
        let mut v = vec!["events", "--file", "/dev/null"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map(|c| c.a)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn filters_are_validated_as_they_are_parsed() {
        for (word, want) in [
            ("deny", Verdict::Drop),
            ("drop", Verdict::Drop),
            ("Deny", Verdict::Drop),
            ("allow", Verdict::Allow),
            ("audit", Verdict::Audit),
        ] {
            assert_eq!(parse(&["--verdict", word]).unwrap().verdict, Some(want));
        }
        for (word, want) in [
            ("in", Direction::Ingress),
            ("ingress", Direction::Ingress),
            ("out", Direction::Egress),
            ("egress", Direction::Egress),
            ("EGRESS", Direction::Egress),
        ] {
            assert_eq!(parse(&["--direction", word]).unwrap().direction, Some(want));
        }
        let e = parse(&["--verdict", "blocked"]).unwrap_err();
        assert!(e.contains("'blocked'"), "{e}");
        assert!(
            e.contains("drop, deny, allow, audit"),
            "lists the accepted: {e}"
        );
        let e = parse(&["--direction", "inbound"]).unwrap_err();
        assert!(
            e.contains("ingress, in, egress, out"),
            "lists the accepted: {e}"
        );
        for bad in [
            &["--port", "0"][..],
            &["--port", "http"],
            &["--port", "70000"],
            &["--from", "nginx"],
            &["--to", "10.0.0.0/40"],
            &["--since", "yesterday"],
            &["--since", "2026-12-02T18:00:00"],
            &["--last", "-1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} refused");
        }
        let a = parse(&[
            "--from",
            "x/a",
            "--to",
            "10.42.0.0/16",
            "--port",
            "80",
            "--since",
            "10m",
            "--last",
            "5",
        ])
        .unwrap();
        let now: Timestamp = "2026-12-02T18:30:00Z".parse().unwrap();
        let f = a.filter(now);
        assert_eq!(f.from, Some(Peer::Pod("x/a".into())));
        assert_eq!(f.to, Some(Peer::Net("10.42.0.0/16".parse().unwrap())));
        assert_eq!(f.port, Some(80));
        assert_eq!(f.since, Some("2026-12-02T18:20:00Z".parse().unwrap()));
        assert_eq!(a.last, Some(5));
        let a = parse(&["--since", "2026-12-02T17:00:00-01:00"]).unwrap();
        assert_eq!(
            a.filter(now).since,
            Some("2026-12-02T18:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn follow_starts_at_the_end_unless_since_or_last_say_otherwise() {
        let from_end = |args: &[&str]| parse(args).unwrap().reading().from_end;
        assert!(from_end(&["--follow"]));
        assert!(!from_end(&["--follow", "--since", "5m"]));
        assert!(!from_end(&["--follow", "--last", "10"]));
        assert!(!from_end(&[]));
        assert!(!from_end(&["--last", "3"]));
    }
}
