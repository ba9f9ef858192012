//! `explain`'s text for people.

use std::fmt::Write as _;

use super::{Explanation, Seen};

/// Text for people.
pub fn render(e: &Explanation) -> String {
    let mut s = String::new();
    let verdict = match e.allowed {
        Some(true) => "ALLOWED",
        Some(false) => "DENIED",
        None => "NOT JUDGED",
    };
    let _ = writeln!(
        s,
        "{} → {} {}/{}: {verdict}",
        end_label(&e.from),
        end_label(&e.to),
        e.protocol,
        e.port,
    );
    // An end given as an address: what the datapath sees there.
    for (word, end) in [("from", &e.from), ("to", &e.to)] {
        if end.given == end.address.to_string() {
            let _ = writeln!(s, "  {word:<7} {}: {}", end.address, end.seen_as.describe());
        }
    }
    if !e.judged {
        let _ = writeln!(
            s,
            "  NOT JUDGED: neither end is a pod; enforcer judges only traffic to or from pods \
             (this connection is the network's and the nodes' business)"
        );
    }
    for side in &e.sides {
        let verdict = if side.allowed { "allow" } else { "deny" };
        let named = |name: &Option<String>| {
            name.as_deref()
                .map(|n| format!(" ({n:?})"))
                .unwrap_or_default()
        };
        for p in &side.passes {
            let _ = writeln!(
                s,
                "  {:<7} at {}: passed on by {} tier {} {} rule {}{}",
                side.direction,
                side.pod,
                p.tier,
                p.policy,
                side.direction,
                p.rule,
                named(&p.rule_name)
            );
        }
        let why = match (&side.policy, side.reason) {
            (Some(p), _) if p == "<host>" => {
                "allowed: the node's own address reaches its pods (the agent's default; \
                 --no-allow-host turns it off)"
                    .into()
            }
            (Some(p), r) => {
                let tier = match side.tier {
                    Some(t @ ("Admin" | "Baseline")) => format!("{t} tier "),
                    _ => String::new(),
                };
                format!(
                    "{} by {tier}{p} {} rule {}{}",
                    if r == "denied-by-rule" {
                        "denied"
                    } else {
                        "allowed"
                    },
                    side.direction,
                    side.rule.unwrap_or(0),
                    named(&side.rule_name)
                )
            }
            (None, "not-isolated") if !side.passes.is_empty() => {
                "not isolated: no NetworkPolicy selects it for this direction, and no later \
                 rule decides"
                    .into()
            }
            (None, "not-isolated") => {
                "not isolated: no policy selects it for this direction".into()
            }
            (None, _) => format!(
                "isolated by [{}] and no rule allows it",
                side.isolated_by.join(", ")
            ),
        };
        let _ = writeln!(
            s,
            "  {:<7} at {}: {verdict}: {why}",
            side.direction, side.pod
        );
    }
    for side in &e.sides {
        if let Some(l) = &side.live {
            let _ = writeln!(
                s,
                "  live maps, {} at {} (ifindex {}): {} ({}){}",
                side.direction,
                side.pod,
                l.ifindex,
                if l.allowed { "allow" } else { "deny" },
                l.reason,
                if l.agrees {
                    ""
                } else {
                    "  DISAGREES with the manifests"
                }
            );
        }
    }
    match e.live_agrees {
        Some(true) => {
            let _ = writeln!(s, "  the live maps agree with the manifests");
        }
        Some(false) => {
            let _ = writeln!(
                s,
                "  WARNING: the live maps disagree with the manifests (a change not yet installed, or drift)"
            );
        }
        None => {}
    }
    if !e.agree {
        let _ = writeln!(
            s,
            "  WARNING: the compiled maps and the reference evaluator disagree"
        );
    }
    s
}

/// `ns/pod (ip)` for a pod given by name, the address otherwise.
fn end_label(end: &super::End) -> String {
    match &end.seen_as {
        Seen::Pod { pod, .. } if *pod == end.given => format!("{pod} ({})", end.address),
        _ => end.given.clone(),
    }
}
