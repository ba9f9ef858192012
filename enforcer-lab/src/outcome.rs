//! What a probe's result means, beyond allow and deny: a connection the target refused
//! (a TCP reset, or an ICMP port unreachable for UDP: the packet got there and nothing
//! listens) is not a policy's doing, and neither is a timeout the enforcer reported no drop
//! for; a probe is `denied` by policy only when the enforcer attributed a drop to it.

use serde_json::Value;

use crate::traffic::{Observed, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeOutcome {
    /// Connected (TCP, SCTP) or echoed (UDP).
    Allowed,
    /// The enforcer dropped it and said so (a drop event of this connection).
    Denied,
    /// The target answered that nothing listens on the port: no policy dropped it.
    Refused,
    /// No route to the target (an ICMP host or network unreachable), no drop event.
    Unreachable,
    /// No answer and no drop event: not attributed to a policy (events off or held back, a
    /// packet lost elsewhere).
    TimeoutNoEvent,
    /// The kernel lacks the protocol's sockets.
    Unsupported,
    /// Failed another way (the detail says how), no drop event.
    Failed,
}

impl ProbeOutcome {
    /// From what the probe saw and the events of its connection.
    pub fn of(outcome: &Outcome, events: &[Value]) -> ProbeOutcome {
        let dropped = events
            .iter()
            .any(|e| e.get("verdict").and_then(Value::as_str) == Some("drop"));
        match outcome.observed {
            Observed::Allow => ProbeOutcome::Allowed,
            Observed::Unsupported => ProbeOutcome::Unsupported,
            Observed::Deny if dropped => ProbeOutcome::Denied,
            Observed::Deny => match outcome.detail.as_str() {
                "refused" => ProbeOutcome::Refused,
                "unreachable" => ProbeOutcome::Unreachable,
                d if d.starts_with("timeout") => ProbeOutcome::TimeoutNoEvent,
                _ => ProbeOutcome::Failed,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeOutcome::Allowed => "allowed",
            ProbeOutcome::Denied => "denied",
            ProbeOutcome::Refused => "refused",
            ProbeOutcome::Unreachable => "unreachable",
            ProbeOutcome::TimeoutNoEvent => "timeout-no-event",
            ProbeOutcome::Unsupported => "unsupported",
            ProbeOutcome::Failed => "failed",
        }
    }

    /// For people: what happened and whose doing it was.
    pub fn explain(self, detail: &str) -> String {
        match self {
            ProbeOutcome::Allowed => format!("allowed ({detail})"),
            ProbeOutcome::Denied => format!("denied by policy ({detail}, dropped by the enforcer)"),
            ProbeOutcome::Refused => {
                "refused: nothing listens (the target answered; no policy dropped it)".into()
            }
            ProbeOutcome::Unreachable => {
                "unreachable: no route to the target (no drop event)".into()
            }
            ProbeOutcome::TimeoutNoEvent => {
                "timeout with no drop event (not attributed to a policy: events off or held \
                 back, or the packet was lost elsewhere)"
                    .into()
            }
            ProbeOutcome::Unsupported => format!("unsupported ({detail})"),
            ProbeOutcome::Failed => format!("failed: {detail} (no drop event)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seen(observed: Observed, detail: &str) -> Outcome {
        Outcome {
            observed,
            detail: detail.into(),
            src_port: Some(40000),
            backend: None,
        }
    }

    #[test]
    fn a_drop_event_makes_a_denial_and_nothing_else_does() {
        let drop = [json!({"verdict": "drop", "policy": "x/p"})];
        let allow_event = [json!({"verdict": "allow"})];
        use ProbeOutcome::*;
        for (o, events, want) in [
            (seen(Observed::Allow, "connected"), &[][..], Allowed),
            (seen(Observed::Deny, "timeout"), &drop[..], Denied),
            (seen(Observed::Deny, "refused"), &drop[..], Denied),
            (seen(Observed::Deny, "refused"), &[][..], Refused),
            (seen(Observed::Deny, "refused"), &allow_event[..], Refused),
            (seen(Observed::Deny, "unreachable"), &[][..], Unreachable),
            (seen(Observed::Deny, "timeout"), &[][..], TimeoutNoEvent),
            (
                seen(Observed::Deny, crate::traffic::SCTP_INIT_LOST),
                &[][..],
                TimeoutNoEvent,
            ),
            (
                seen(Observed::Deny, crate::traffic::SCTP_INIT_LOST),
                &drop[..],
                Denied,
            ),
            (seen(Observed::Deny, "not permitted"), &[][..], Failed),
            (seen(Observed::Unsupported, "no SCTP"), &[][..], Unsupported),
        ] {
            assert_eq!(ProbeOutcome::of(&o, events), want, "{o:?} {events:?}");
        }
        assert_eq!(
            serde_json::to_value(TimeoutNoEvent).unwrap(),
            json!("timeout-no-event")
        );
        assert_eq!(TimeoutNoEvent.as_str(), "timeout-no-event");
    }

    #[test]
    fn people_read_whose_doing_it_was() {
        assert_eq!(
            ProbeOutcome::Refused.explain("refused"),
            "refused: nothing listens (the target answered; no policy dropped it)"
        );
        assert_eq!(
            ProbeOutcome::Denied.explain("timeout"),
            "denied by policy (timeout, dropped by the enforcer)"
        );
    }
}
