//! Results: truth tables for people (rows: from, columns: to, one table per port and protocol,
//! like the Kubernetes e2e reachability tables) and the contract's JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::outcome::ProbeOutcome;
use crate::plan::{Ep, ProbePlan};
use crate::scenario::{Family, PortRef, Protocol, Target};
use crate::traffic::{Observed, Outcome};

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub probe: ProbePlan,
    pub outcome: Outcome,
    /// The agent's events for this probe's connection.
    pub events: Vec<Value>,
    /// For a probe through a Service: why the pod that answered is the wrong one.
    pub wrong_backend: Option<String>,
}

impl ProbeResult {
    /// Differs from what the scenario expects (an unsupported probe never does), or went
    /// through a Service to something that is none of its backends.
    /// Allowed, denied by policy (a drop event), refused by the target, … (see [`ProbeOutcome`]).
    pub fn outcome(&self) -> ProbeOutcome {
        ProbeOutcome::of(&self.outcome, &self.events)
    }

    pub fn mismatch(&self) -> bool {
        if self.wrong_backend.is_some() {
            return true;
        }
        match (self.probe.spec.expect, self.outcome.observed) {
            (_, Observed::Unsupported) | (None, _) => false,
            (Some(want), got) => want.as_str() != got.as_str(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepResult {
    pub step: usize,
    /// What the step changed before its probes, one line each (for people).
    pub changes: Vec<String>,
    pub probes: Vec<ProbeResult>,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<StepResult>,
}

impl Report {
    pub fn mismatches(&self) -> usize {
        self.steps
            .iter()
            .flat_map(|s| &s.probes)
            .filter(|p| p.mismatch())
            .count()
    }

    pub fn probe_count(&self) -> usize {
        self.steps.iter().map(|s| s.probes.len()).sum()
    }

    /// The JSON document of the contract, its keys in the contract's order.
    pub fn json_doc(&self) -> JsonReport<'_> {
        JsonReport {
            steps: self
                .steps
                .iter()
                .map(|s| JsonStep {
                    step: s.step,
                    changes: &s.changes,
                    probes: s.probes.iter().map(probe_json).collect(),
                })
                .collect(),
            mismatches: self.mismatches(),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.json_doc()).expect("a report is JSON")
    }

    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(&self.json_doc()).expect("a report is JSON")
    }

    /// Tables, the notable events and a summary, for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            render_step(&mut out, s);
        }
        let n = self.mismatches();
        let total = self.probe_count();
        if n == 0 {
            let _ = writeln!(out, "PASS: {total} probes, no mismatches");
        } else {
            let _ = writeln!(
                out,
                "FAIL: {n} of {total} probes differ from what was expected"
            );
        }
        out
    }
}

#[derive(serde::Serialize)]
pub struct JsonReport<'a> {
    pub steps: Vec<JsonStep<'a>>,
    pub mismatches: usize,
}

#[derive(serde::Serialize)]
pub struct JsonStep<'a> {
    pub step: usize,
    /// What the step changed (`+`, `-`, `~` lines; with `--source kube`, what kubectl said).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub changes: &'a [String],
    pub probes: Vec<JsonProbe<'a>>,
}

#[derive(serde::Serialize)]
pub struct JsonProbe<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// As written: a number or a port name.
    pub port: Value,
    pub protocol: &'static str,
    pub expected: Option<&'static str>,
    pub observed: &'static str,
    /// What `observed` means: allowed, denied (by policy: the enforcer reported the drop),
    /// refused (nothing listens), unreachable, timeout-no-event, unsupported or failed.
    pub outcome: ProbeOutcome,
    /// The address and port the probe went to.
    pub dst: String,
    pub dst_port: u16,
    /// Why: connected, echoed, timeout, refused, unreachable, …
    pub detail: &'a str,
    /// Who answered (`ns/pod address:port`), where the server said (UDP, TCP to a Service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'a str>,
    /// Set when a probe through a Service was answered by something that is no backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrong_backend: Option<&'a str>,
    pub events: &'a [Value],
}

pub fn probe_json(p: &ProbeResult) -> JsonProbe<'_> {
    let spec = &p.probe.spec;
    JsonProbe {
        from: &spec.from_text,
        to: &spec.to_text,
        port: match &spec.port {
            PortRef::Number(n) => json!(n),
            PortRef::Name(s) => json!(s),
        },
        protocol: spec.protocol.as_str(),
        expected: spec.expect.map(|v| v.as_str()),
        observed: p.outcome.observed.as_str(),
        outcome: p.outcome(),
        dst: p.probe.dst_ip.to_string(),
        dst_port: p.probe.dst_port,
        detail: &p.outcome.detail,
        backend: p.outcome.backend.as_deref(),
        wrong_backend: p.wrong_backend.as_deref(),
        events: &p.events,
    }
}

fn symbol(p: &ProbeResult) -> String {
    let s = match p.outcome.observed {
        Observed::Allow => ".",
        Observed::Deny => "X",
        Observed::Unsupported => "-",
    };
    if p.mismatch() {
        format!("{s}*")
    } else {
        s.to_string()
    }
}

/// Notes per step about probes that went as expected (mismatches are always all shown).
const MAX_NOTES: usize = 20;

/// One table per protocol, port and (when a step mixes them) address family.
type TableKey = (Protocol, u16, Option<Family>);

fn render_step(out: &mut String, s: &StepResult) {
    let _ = writeln!(out, "step {}:", s.step);
    for c in &s.changes {
        let _ = writeln!(out, "  {c}");
    }
    if !s.changes.is_empty() {
        out.push('\n');
    }
    if s.probes.is_empty() {
        let _ = writeln!(out, "  (no probes)\n");
        return;
    }
    let mixed = {
        let mut fams = s.probes.iter().map(|p| Family::of(&p.probe.dst_ip));
        let first = fams.next();
        fams.any(|f| Some(f) != first)
    };
    let mut tables: BTreeMap<TableKey, Vec<&ProbeResult>> = BTreeMap::new();
    for p in &s.probes {
        let fam = mixed.then(|| Family::of(&p.probe.dst_ip));
        tables
            .entry((p.probe.spec.protocol, p.probe.dst_port, fam))
            .or_default()
            .push(p);
    }
    for ((proto, port, fam), probes) in &tables {
        let title = match fam {
            Some(f) => format!("{proto}/{port} {}", f.label()),
            None => format!("{proto}/{port}"),
        };
        render_table(out, &title, probes);
    }
    // Every mismatch; denials (with their drops) and answers through Services up to a limit.
    let mut notes = String::new();
    let mut others = 0;
    for p in &s.probes {
        if p.mismatch() {
            note(&mut notes, p);
        } else if p.outcome.observed == Observed::Deny || p.probe.service.is_some() {
            others += 1;
            if others <= MAX_NOTES {
                note(&mut notes, p);
            }
        }
    }
    if others > MAX_NOTES {
        let _ = writeln!(
            notes,
            "    … and {} more denied or through a Service, as expected (all of them: --output json)",
            others - MAX_NOTES
        );
    }
    if !notes.is_empty() {
        out.push_str(&notes);
        out.push('\n');
    }
    let allow = count(s, Observed::Allow);
    let deny = count(s, Observed::Deny);
    let unsup = count(s, Observed::Unsupported);
    let mism = s.probes.iter().filter(|p| p.mismatch()).count();
    let _ = writeln!(
        out,
        "step {}: {} probes: {allow} allowed, {deny} denied{}; {mism} mismatch{}\n",
        s.step,
        s.probes.len(),
        if unsup > 0 {
            format!(", {unsup} unsupported")
        } else {
            String::new()
        },
        if mism == 1 { "" } else { "es" }
    );
}

fn count(s: &StepResult, o: Observed) -> usize {
    s.probes.iter().filter(|p| p.outcome.observed == o).count()
}

fn render_table(out: &mut String, title: &str, probes: &[&ProbeResult]) {
    // Pods in the scenario's order, then other targets (addresses) as they come.
    let mut rows: Vec<(Ep, &str)> = Vec::new();
    let mut cols: Vec<(u8, Option<Ep>, usize, &str)> = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let from = p.probe.spec.from_text.as_str();
        if !rows.iter().any(|r| r.1 == from) {
            rows.push((p.probe.src, from));
        }
        let to = p.probe.spec.to_text.as_str();
        if !cols.iter().any(|c| c.3 == to) {
            cols.push(match p.probe.spec.to {
                Target::Pod { .. } | Target::Host(_) | Target::Node(_) => (0, p.probe.dst, i, to),
                _ => (1, None, i, to),
            });
        }
    }
    rows.sort();
    cols.sort();
    let rows: Vec<&str> = rows.into_iter().map(|r| r.1).collect();
    let cols: Vec<&str> = cols.into_iter().map(|c| c.3).collect();
    let mut cells: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for p in probes {
        let cell = cells
            .entry((&p.probe.spec.from_text, &p.probe.spec.to_text))
            .or_default();
        // Two probes of one pair in one table (a repeat): show both.
        cell.push_str(&symbol(p));
    }
    let corner = format!("{title}  from \\ to");
    let w0 = rows
        .iter()
        .map(|r| r.len())
        .chain([corner.len()])
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            let cell_w = rows
                .iter()
                .filter_map(|r| cells.get(&(*r, *c)).map(|s| s.len()))
                .max()
                .unwrap_or(1);
            c.len().max(cell_w)
        })
        .collect();
    let mut line = format!("{corner:<w0$}");
    for (c, w) in cols.iter().zip(&widths) {
        let _ = write!(line, "  {c:<w$}");
    }
    let _ = writeln!(out, "{}", line.trim_end());
    for r in &rows {
        let mut line = format!("{r:<w0$}");
        for (c, w) in cols.iter().zip(&widths) {
            let cell = cells.get(&(*r, *c)).map(String::as_str).unwrap_or("");
            let _ = write!(line, "  {cell:<w$}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push('\n');
}

/// A line about a denied or unexpected probe, with the drop the agent attributed.
pub fn note(out: &mut String, p: &ProbeResult) {
    note_as(out, p, false);
}

/// One probe for `lab probe`: as [`note`], saying what the result means (allowed, denied by
/// policy, refused: nothing listens, …) rather than allow or deny.
pub fn probe_text(p: &ProbeResult) -> String {
    let mut s = String::new();
    note_as(&mut s, p, true);
    s.lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn note_as(out: &mut String, p: &ProbeResult, explained: bool) {
    let spec = &p.probe.spec;
    let expect = match spec.expect {
        Some(e) if p.mismatch() => format!(" (expected {})", e.as_str()),
        _ => String::new(),
    };
    let via = match (&p.probe.service, &p.outcome.backend) {
        (Some(_), Some(b)) => format!(", answered by {b}"),
        _ => String::new(),
    };
    let verdict = if explained {
        p.outcome().explain(&format!("{}{via}", p.outcome.detail))
    } else {
        format!(
            "{} ({}{via})",
            p.outcome.observed.as_str(),
            p.outcome.detail
        )
    };
    let _ = writeln!(
        out,
        "  {} {} -> {}{} {}/{}: {verdict}{expect}",
        if p.mismatch() { "*" } else { " " },
        spec.from_text,
        spec.to_text,
        if spec.to_text == p.probe.dst_ip.to_string() {
            String::new()
        } else {
            format!(" [{}]", p.probe.dst_ip)
        },
        spec.protocol,
        p.probe.dst_port,
    );
    if let Some(w) = &p.wrong_backend {
        let _ = writeln!(out, "      {w}");
    }
    let drops: Vec<&Value> = p
        .events
        .iter()
        .filter(|e| e.get("verdict").and_then(Value::as_str) == Some("drop"))
        .collect();
    if let Some(e) = drops.first() {
        let s = |k: &str| {
            e.get(k)
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .unwrap_or_else(|| "-".into())
        };
        let isolated: Vec<&str> = e
            .get("isolated_by")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let by = match e.get("policy").and_then(Value::as_str) {
            Some(p) => format!("policy {p}"),
            None if !isolated.is_empty() => format!("isolated by {}", isolated.join(", ")),
            None => "no policy".to_string(),
        };
        let _ = writeln!(
            out,
            "      drop {} at {}: {}, {by}{}",
            s("direction"),
            s("endpoint"),
            s("reason"),
            if drops.len() > 1 {
                format!(" ({} drop events)", drops.len())
            } else {
                String::new()
            }
        );
    }
}

/// The events of one probe: those whose 5-tuple is the probe's connection. Through a Service
/// the destination is translated on the way, so there the source address and port (and the
/// protocol) are enough; and a pod that reaches itself through a Service (hairpin) arrives
/// masqueraded to its node's address, so there an event into the prober itself from that
/// source port is the probe's too.
pub fn match_events(events: &[Value], p: &ProbePlan, src_port: Option<u16>) -> Vec<Value> {
    let Some(sport) = src_port else {
        return Vec::new();
    };
    let src = p.src_ip.to_string();
    let dst = p.dst_ip.to_string();
    events
        .iter()
        .filter(|e| {
            let str_of = |k: &str| e.get(k).and_then(Value::as_str);
            let num_of = |k: &str| e.get(k).and_then(Value::as_u64);
            let addr_of = |k: &str| str_of(k).and_then(|s| s.parse::<std::net::IpAddr>().ok());
            let hairpin = p.service.is_some() && addr_of("dst") == Some(p.src_ip);
            str_of("protocol").is_some_and(|x| x.eq_ignore_ascii_case(p.spec.protocol.as_str()))
                && (addr_of("src") == src.parse().ok() || hairpin)
                && num_of("src_port") == Some(u64::from(sport))
                && (p.service.is_some()
                    || (str_of("dst").and_then(|s| s.parse::<std::net::IpAddr>().ok())
                        == dst.parse().ok()
                        && num_of("dst_port") == Some(u64::from(p.dst_port))))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::scenario::parse;

    const TEXT: &str = "
pods:
  - {namespace: x, name: a, ports: [{name: serve-81-udp, port: 81, protocol: UDP}]}
  - {namespace: x, name: b, ports: [{name: serve-81-udp, port: 81, protocol: UDP}]}
probes:
  - {from: x/a, to: x/b, port: 80, protocol: TCP, expect: allow}
  - {from: x/b, to: x/a, port: 80, protocol: TCP, expect: deny}
  - {from: x/a, to: x/b, port: serve-81-udp, protocol: UDP}
  - {from: x/b, to: x/a, port: 82, protocol: SCTP, expect: allow}
steps:
  - probes: [{from: x/a, to: 10.42.1.11, port: 80, expect: deny}]
";

    fn report(observed: &[&[Observed]]) -> Report {
        let p = plan(&parse(TEXT).unwrap(), "enf-000000-").unwrap();
        Report {
            steps: p
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepResult {
                    step: i,
                    changes: Vec::new(),
                    probes: s
                        .probes
                        .iter()
                        .zip(observed[i])
                        .map(|(pr, o)| ProbeResult {
                            probe: pr.clone(),
                            outcome: Outcome {
                                observed: *o,
                                detail: "timeout".into(),
                                src_port: Some(40000),
                                backend: None,
                            },
                            events: Vec::new(),
                            wrong_backend: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn json_has_the_contract_shape() {
        use Observed::*;
        let r = report(&[&[Allow, Allow, Allow, Unsupported], &[Deny]]);
        let j = r.to_json();
        assert_eq!(j["mismatches"], json!(1));
        let p0 = &j["steps"][0]["probes"][0];
        for (k, v) in [
            ("from", json!("x/a")),
            ("to", json!("x/b")),
            ("port", json!(80)),
            ("protocol", json!("TCP")),
            ("expected", json!("allow")),
            ("observed", json!("allow")),
            ("events", json!([])),
        ] {
            assert_eq!(p0[k], v, "{k}");
        }
        assert_eq!(p0["outcome"], json!("allowed"));
        assert_eq!(
            j["steps"][1]["probes"][0]["outcome"],
            json!("timeout-no-event")
        );
        let p2 = &j["steps"][0]["probes"][2];
        assert_eq!(p2["port"], json!("serve-81-udp"), "the port as written");
        assert_eq!(p2["dst_port"], json!(81));
        assert_eq!(p2["expected"], Value::Null);
        assert_eq!(j["steps"][0]["probes"][3]["observed"], json!("unsupported"));
        assert_eq!(j["steps"][1]["step"], json!(1));
        assert_eq!(j["steps"][1]["probes"][0]["to"], json!("10.42.1.11"));
    }

    #[test]
    fn json_keys_come_in_the_contract_order() {
        use Observed::*;
        let text = report(&[&[Allow, Allow, Allow, Unsupported], &[Deny]]).to_json_string();
        let order = [
            "\"from\"",
            "\"to\"",
            "\"port\"",
            "\"protocol\"",
            "\"expected\"",
            "\"observed\"",
        ];
        let pos: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.find("\"steps\"").unwrap() < text.find("\"mismatches\"").unwrap());
    }

    #[test]
    fn unsupported_and_unexpected_probes_are_not_mismatches() {
        use Observed::*;
        let r = report(&[&[Allow, Deny, Deny, Unsupported], &[Deny]]);
        assert_eq!(r.mismatches(), 0);
        let r = report(&[&[Deny, Allow, Deny, Deny], &[Allow]]);
        assert_eq!(r.mismatches(), 4);
    }

    #[test]
    fn tables_per_protocol_and_port() {
        use Observed::*;
        let r = report(&[&[Allow, Allow, Deny, Unsupported], &[Deny]]);
        let text = r.render();
        let expected = "\
step 0:
TCP/80  from \\ to  x/a  x/b
x/a                     .
x/b                .*

UDP/81  from \\ to  x/b
x/a                X

SCTP/82  from \\ to  x/a
x/b                 -

  * x/b -> x/a [10.42.1.10] TCP/80: allow (timeout) (expected deny)
    x/a -> x/b [10.42.1.11] UDP/81: deny (timeout)

step 0: 4 probes: 2 allowed, 1 denied, 1 unsupported; 1 mismatch

step 1:
TCP/80  from \\ to  10.42.1.11
x/a                X

    x/a -> 10.42.1.11 TCP/80: deny (timeout)

step 1: 1 probes: 0 allowed, 1 denied; 0 mismatches

FAIL: 1 of 5 probes differ from what was expected
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn events_are_matched_by_five_tuple() {
        let p = plan(&parse(TEXT).unwrap(), "enf-000000-").unwrap();
        let probe = &p.steps[0].probes[0]; // 10.42.1.10 -> 10.42.1.11 TCP 80
        let ev = |src: &str, sport: u64, proto: &str| {
            json!({"src": src, "src_port": sport, "dst": "10.42.1.11", "dst_port": 80,
                   "protocol": proto, "verdict": "drop", "policy": "x/p"})
        };
        let events = vec![
            ev("10.42.1.10", 40000, "TCP"),
            ev("10.42.1.10", 40001, "TCP"),
            ev("10.42.1.10", 40000, "UDP"),
            ev("10.42.1.12", 40000, "TCP"),
            ev("10.42.1.10", 40000, "tcp"),
        ];
        let m = match_events(&events, probe, Some(40000));
        assert_eq!(m, vec![events[0].clone(), events[4].clone()]);
        assert!(match_events(&events, probe, None).is_empty());
        // Through a Service back to the prober itself (hairpin): masqueraded to the node.
        let hairpin = json!({"src": "10.42.1.1", "src_port": 40000, "dst": "10.42.1.10",
                             "dst_port": 8080, "protocol": "TCP", "verdict": "drop"});
        let mut through = probe.clone();
        through.service = Some("x/s".into());
        assert_eq!(
            match_events(std::slice::from_ref(&hairpin), &through, Some(40000)),
            vec![hairpin.clone()]
        );
        assert!(match_events(std::slice::from_ref(&hairpin), probe, Some(40000)).is_empty());
        assert!(match_events(std::slice::from_ref(&hairpin), &through, Some(40001)).is_empty());
    }

    #[test]
    fn one_probe_says_refused_or_denied_by_policy() {
        use Observed::*;
        let mut r = report(&[&[Allow, Deny, Deny, Allow], &[Deny]]);
        r.steps[0].probes[1].outcome.detail = "refused".into();
        r.steps[0].probes[2].events = vec![json!({"verdict": "drop", "direction": "ingress",
            "endpoint": "x/b", "reason": "no-rule-allows", "policy": null,
            "isolated_by": ["x/deny"]})];
        let text: Vec<String> = r.steps[0].probes.iter().map(probe_text).collect();
        assert_eq!(
            text[0], "x/a -> x/b [10.42.1.11] TCP/80: allowed (timeout)\n",
            "{text:?}"
        );
        assert_eq!(
            text[1],
            "x/b -> x/a [10.42.1.10] TCP/80: refused: nothing listens (the target answered; \
             no policy dropped it)\n"
        );
        assert_eq!(
            text[2],
            "x/a -> x/b [10.42.1.11] UDP/81: denied by policy (timeout, dropped by the \
             enforcer)\n  drop ingress at x/b: no-rule-allows, isolated by x/deny\n"
        );
        let j = r.to_json();
        let outcomes: Vec<&Value> = (0..3)
            .map(|i| &j["steps"][0]["probes"][i]["outcome"])
            .collect();
        assert_eq!(
            outcomes,
            [&json!("allowed"), &json!("refused"), &json!("denied")]
        );
    }

    #[test]
    fn denied_probes_show_their_drop() {
        use Observed::*;
        let mut r = report(&[&[Allow, Deny, Allow, Allow], &[Deny]]);
        r.steps[0].probes[1].events = vec![
            json!({"verdict": "drop", "direction": "ingress", "endpoint": "x/a",
                   "reason": "no-rule", "policy": null, "isolated_by": ["x/deny", "x/other"]}),
            json!({"verdict": "drop", "direction": "ingress", "endpoint": "x/a",
                   "reason": "no-rule", "policy": null, "isolated_by": ["x/deny", "x/other"]}),
        ];
        r.steps[1].probes[0].events = vec![json!({"verdict": "drop", "direction": "egress",
            "endpoint": "x/a", "reason": "deny-rule", "policy": "x/p", "rule": 0})];
        let text = r.render();
        assert!(
            text.contains(
                "      drop ingress at x/a: no-rule, isolated by x/deny, x/other (2 drop events)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("      drop egress at x/a: deny-rule, policy x/p\n"),
            "{text}"
        );
    }
}
