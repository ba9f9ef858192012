//! Which events to show: the filters of `enforcer events`, parsed strictly (an unknown value is
//! an error that lists the accepted ones) and matched against event lines. Pure.

use std::net::IpAddr;
use std::str::FromStr;

use clap::builder::TypedValueParser as _;
use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};

use super::EventLine;

/// A verdict, by the name the events file uses or a synonym (`deny`, the word `lab probe` and
/// `explain` print, for `drop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Allow,
    Audit,
}

impl Verdict {
    /// Every accepted spelling, as `--verdict` lists them.
    pub const NAMES: [&'static str; 4] = ["drop", "deny", "allow", "audit"];

    pub fn from_name(s: &str) -> Option<Verdict> {
        match s.to_ascii_lowercase().as_str() {
            "drop" | "deny" => Some(Verdict::Drop),
            "allow" => Some(Verdict::Allow),
            "audit" => Some(Verdict::Audit),
            _ => None,
        }
    }

    /// The name in the events file.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Drop => "drop",
            Verdict::Allow => "allow",
            Verdict::Audit => "audit",
        }
    }

    /// The clap parser: the accepted spellings (case-insensitive), listed in `--help` and in
    /// the error for anything else.
    pub fn parser() -> impl clap::builder::TypedValueParser<Value = Verdict> {
        clap::builder::PossibleValuesParser::new(Self::NAMES)
            .try_map(|s| Verdict::from_name(&s).ok_or_else(|| format!("{s:?} is not a verdict")))
    }
}

/// A direction, as the events file names it or by the short synonyms `in` and `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const NAMES: [&'static str; 4] = ["ingress", "in", "egress", "out"];

    pub fn from_name(s: &str) -> Option<Direction> {
        match s.to_ascii_lowercase().as_str() {
            "ingress" | "in" => Some(Direction::Ingress),
            "egress" | "out" => Some(Direction::Egress),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub fn parser() -> impl clap::builder::TypedValueParser<Value = Direction> {
        clap::builder::PossibleValuesParser::new(Self::NAMES).try_map(|s| {
            Direction::from_name(&s).ok_or_else(|| format!("{s:?} is not a direction"))
        })
    }
}

/// One end of a flow, for `--from` and `--to`: a pod by `namespace/name`, or addresses (an IP
/// address or a CIDR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Pod(String),
    Net(IpNet),
}

impl FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Peer, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Peer::Net(IpNet::from(ip)));
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Peer::Net(net.trunc()));
        }
        // A namespace is a DNS label, a pod name a DNS subdomain (dots allowed).
        let valid = |part: &str, dots: bool| {
            !part.is_empty()
                && part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.')
                })
        };
        match s.split_once('/') {
            Some((ns, name)) if valid(ns, false) && valid(name, true) => {
                Ok(Peer::Pod(format!("{ns}/{name}")))
            }
            _ => Err(format!(
                "{s:?} is neither a pod (namespace/name), an IP address nor a CIDR (10.42.0.0/16)"
            )),
        }
    }
}

impl Peer {
    /// Whether the end of a flow with address `ip` and pod `pod` (if it is one) is this.
    fn matches(&self, ip: &str, pod: Option<&str>) -> bool {
        match self {
            Peer::Pod(want) => pod == Some(want.as_str()),
            Peer::Net(net) => ip.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
        }
    }
}

/// `--since`: a duration back from now (`10m`, `1h30m`, `90s`) or an RFC 3339 time with its
/// zone (`2026-12-02T18:00:00Z`, `2026-12-02T19:00:00+01:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    Ago(SignedDuration),
    At(Timestamp),
}

impl FromStr for Since {
    type Err = String;
    fn from_str(s: &str) -> Result<Since, String> {
        let s = s.trim();
        if let Ok(d) = s.parse::<SignedDuration>() {
            if d.is_negative() {
                return Err(format!("{s:?} is a negative duration"));
            }
            return Ok(Since::Ago(d));
        }
        match s.parse::<Timestamp>() {
            Ok(t) => Ok(Since::At(t)),
            Err(e) => Err(format!(
                "{s:?} is neither a duration (10m, 1h30m, 90s) nor an RFC 3339 time with its \
                 zone (2026-12-02T18:00:00Z): {e}"
            )),
        }
    }
}

impl Since {
    /// The earliest time shown, given the time now.
    pub fn cutoff(self, now: Timestamp) -> Timestamp {
        match self {
            Since::At(t) => t,
            Since::Ago(d) => now.checked_sub(d).unwrap_or(Timestamp::MIN),
        }
    }
}

/// The wall-clock time of an event: its Unix time, else its RFC 3339 `time`; None for the
/// lines of agents that wrote only the kernel's monotonic clock.
pub fn event_time(e: &EventLine) -> Option<Timestamp> {
    if e.unix_time_ns != 0 {
        return Timestamp::from_nanosecond(i128::from(e.unix_time_ns)).ok();
    }
    e.time.parse().ok()
}

/// Which events to show. Empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The endpoint's namespace.
    pub namespace: Option<String>,
    /// The endpoint, `namespace/name` or just `name`.
    pub pod: Option<String>,
    pub direction: Option<Direction>,
    pub verdict: Option<Verdict>,
    /// `namespace/name` of a policy that decided the event or isolates its endpoint.
    pub policy: Option<String>,
    /// The flow's source: a pod, an address or a CIDR.
    pub from: Option<Peer>,
    /// The flow's destination.
    pub to: Option<Peer>,
    /// The destination port.
    pub port: Option<u16>,
    /// Only events at or after this time (events without a wall-clock time never match).
    pub since: Option<Timestamp>,
}

impl Filter {
    pub fn matches(&self, e: &EventLine) -> bool {
        let ep = e.endpoint.as_deref().unwrap_or("");
        let (ns, name) = ep.split_once('/').unwrap_or(("", ep));
        let ingress = e.direction == "ingress";
        // At ingress the endpoint is the destination and the peer the source; at egress the
        // other way round.
        let (src_pod, dst_pod) = if ingress {
            (e.peer.as_deref(), e.endpoint.as_deref())
        } else {
            (e.endpoint.as_deref(), e.peer.as_deref())
        };
        self.namespace.as_deref().is_none_or(|want| want == ns)
            && self.pod.as_deref().is_none_or(|p| p == ep || p == name)
            && self.direction.is_none_or(|d| d.as_str() == e.direction)
            && self.verdict.is_none_or(|v| v.as_str() == e.verdict)
            && self.policy.as_deref().is_none_or(|p| {
                e.policy.as_deref() == Some(p) || e.isolated_by.iter().any(|x| x == p)
            })
            && self
                .from
                .as_ref()
                .is_none_or(|f| f.matches(&e.src, src_pod))
            && self.to.as_ref().is_none_or(|t| t.matches(&e.dst, dst_pod))
            && self.port.is_none_or(|p| p == e.dst_port)
            && self
                .since
                .is_none_or(|t| event_time(e).is_some_and(|at| at >= t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::ev;

    #[test]
    fn verdicts_and_directions_take_their_synonyms() {
        for (s, v) in [
            ("drop", Verdict::Drop),
            ("deny", Verdict::Drop),
            ("DENY", Verdict::Drop),
            ("allow", Verdict::Allow),
            ("audit", Verdict::Audit),
        ] {
            assert_eq!(Verdict::from_name(s), Some(v), "{s}");
        }
        assert_eq!(Verdict::from_name("denied"), None);
        for (s, d) in [
            ("ingress", Direction::Ingress),
            ("in", Direction::Ingress),
            ("egress", Direction::Egress),
            ("out", Direction::Egress),
            ("OUT", Direction::Egress),
        ] {
            assert_eq!(Direction::from_name(s), Some(d), "{s}");
        }
        assert_eq!(Direction::from_name("inbound"), None);
    }

    #[test]
    fn peers_are_pods_addresses_or_cidrs() {
        assert_eq!("x/a".parse(), Ok(Peer::Pod("x/a".into())));
        assert_eq!(
            "10.0.0.1".parse(),
            Ok(Peer::Net("10.0.0.1/32".parse().unwrap()))
        );
        assert_eq!(
            "10.0.0.7/24".parse(),
            Ok(Peer::Net("10.0.0.0/24".parse().unwrap()))
        );
        assert_eq!(
            "fd00::1".parse(),
            Ok(Peer::Net("fd00::1/128".parse().unwrap()))
        );
        for bad in ["a", "x/", "/a", "x/a/b", "10.0.0.1/33", "300.1.1.1"] {
            let e = bad.parse::<Peer>().unwrap_err();
            assert!(e.contains("neither a pod"), "{bad}: {e}");
        }
    }

    #[test]
    fn since_is_a_duration_or_a_time_with_its_zone() {
        let now: Timestamp = "2026-12-02T18:30:00Z".parse().unwrap();
        let ago: Since = "10m".parse().unwrap();
        assert_eq!(ago.cutoff(now), "2026-12-02T18:20:00Z".parse().unwrap());
        let ago: Since = "1h30m".parse().unwrap();
        assert_eq!(ago.cutoff(now), "2026-12-02T17:00:00Z".parse().unwrap());
        let at: Since = "2026-12-02T19:00:00+01:00".parse().unwrap();
        assert_eq!(at.cutoff(now), "2026-12-02T18:00:00Z".parse().unwrap());
        for bad in ["yesterday", "2026-12-02T18:00:00", "-5m", "10 parsecs"] {
            let e = bad.parse::<Since>().unwrap_err();
            assert!(e.contains(bad.trim()), "{bad}: {e}");
        }
    }

    /// Every filter, matching the event (ingress drop at x/b from x/a, 10.0.0.1:40000 >
    /// 10.0.0.2:80, at 2023-11-14T22:13:20.123Z) or not.
    #[test]
    fn filters_by_every_field() {
        let e = ev();
        assert!(Filter::default().matches(&e));
        let f = |edit: &dyn Fn(&mut Filter)| {
            let mut g = Filter::default();
            edit(&mut g);
            g.matches(&e)
        };
        assert!(f(&|g| g.namespace = Some("x".into())));
        assert!(!f(&|g| g.namespace = Some("y".into())));
        assert!(f(&|g| g.pod = Some("x/b".into())));
        assert!(f(&|g| g.pod = Some("b".into())));
        assert!(!f(&|g| g.pod = Some("a".into())));
        assert!(f(&|g| g.direction = Some(Direction::Ingress)));
        assert!(!f(&|g| g.direction = Some(Direction::Egress)));
        assert!(f(&|g| g.verdict = Some(Verdict::Drop)));
        assert!(!f(&|g| g.verdict = Some(Verdict::Allow)));
        assert!(!f(&|g| g.verdict = Some(Verdict::Audit)));
        assert!(f(&|g| g.policy = Some("x/deny".into())));
        assert!(!f(&|g| g.policy = Some("x/other".into())));
        // The source is the peer at ingress, the destination the endpoint.
        for (from, to, want) in [
            ("x/a", "x/b", true),
            ("x/b", "x/a", false),
            ("10.0.0.1", "10.0.0.2", true),
            ("10.0.0.0/24", "10.0.0.0/30", true),
            ("10.0.0.2", "10.0.0.2", false),
            ("10.0.1.0/24", "x/b", false),
        ] {
            let (from, to) = (from.parse::<Peer>().unwrap(), to.parse::<Peer>().unwrap());
            let both = f(&|g| {
                g.from = Some(from.clone());
                g.to = Some(to.clone());
            });
            assert_eq!(both, want, "{from:?} -> {to:?}");
        }
        for (side, want_from, want_to) in [
            ("x/a", true, false),
            ("x/b", false, true),
            ("10.0.0.1", true, false),
            ("10.0.0.0/24", true, true),
            ("fd00::/8", false, false),
        ] {
            let p = side.parse::<Peer>().unwrap();
            assert_eq!(f(&|g| g.from = Some(p.clone())), want_from, "--from {side}");
            assert_eq!(f(&|g| g.to = Some(p.clone())), want_to, "--to {side}");
        }
        assert!(f(&|g| g.port = Some(80)));
        assert!(!f(&|g| g.port = Some(40000)));
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        assert!(f(&|g| g.since = at("2023-11-14T22:13:20Z")));
        assert!(f(&|g| g.since = at("2023-11-14T22:13:20.123Z")));
        assert!(!f(&|g| g.since = at("2023-11-14T22:13:21Z")));
    }

    #[test]
    fn at_egress_the_endpoint_is_the_source() {
        let mut e = ev();
        e.direction = "egress".into();
        e.endpoint = Some("x/a".into());
        e.peer = Some("x/b".into());
        let g = Filter {
            from: Some("x/a".parse().unwrap()),
            to: Some("x/b".parse().unwrap()),
            ..Filter::default()
        };
        assert!(g.matches(&e));
        let g = Filter {
            from: Some("x/b".parse().unwrap()),
            ..Filter::default()
        };
        assert!(!g.matches(&e));
    }

    #[test]
    fn since_uses_the_time_field_and_skips_events_without_wall_clock() {
        let g = Filter {
            since: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            ..Filter::default()
        };
        let mut e = ev();
        e.unix_time_ns = 0;
        e.time = String::new();
        assert!(!g.matches(&e), "no wall-clock time: not shown with --since");
        e.time = "2026-12-02T18:31:07.123456789+00:00".into();
        assert!(g.matches(&e));
        e.time = "2025-12-02T18:31:07.123456789+00:00".into();
        assert!(!g.matches(&e));
    }
}
