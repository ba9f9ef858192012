//! `enforcer events`: the verdict events of a node's agent, for people (text) and machines
//! (JSON lines), filtered by namespace, pod, direction, verdict and policy.
//!
//! The agent names every event as it reads it from the ring buffer and appends it as one JSON
//! object per line to its events file (rotated by size); any number of readers follow that file
//! at once. The filter and the text format are pure and tested here; following is a thin loop
//! that survives rotation.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// An event line as the agent writes it.
pub use crate::agent::EventRecord as EventLine;

/// Which events to show. Empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The endpoint's namespace.
    pub namespace: Option<String>,
    /// The endpoint, `namespace/name` or just `name`.
    pub pod: Option<String>,
    pub direction: Option<String>,
    pub verdict: Option<String>,
    /// `namespace/name` of a policy that decided the event or isolates its endpoint.
    pub policy: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &EventLine) -> bool {
        let ep = e.endpoint.as_deref().unwrap_or("");
        let (ns, name) = ep.split_once('/').unwrap_or(("", ep));
        if self.namespace.as_deref().is_some_and(|want| want != ns) {
            return false;
        }
        if let Some(p) = &self.pod
            && p != ep
            && p != name
        {
            return false;
        }
        if self
            .direction
            .as_deref()
            .is_some_and(|d| !d.eq_ignore_ascii_case(&e.direction))
        {
            return false;
        }
        if self
            .verdict
            .as_deref()
            .is_some_and(|v| !v.eq_ignore_ascii_case(&e.verdict))
        {
            return false;
        }
        if let Some(p) = &self.policy
            && e.policy.as_deref() != Some(p.as_str())
            && !e.isolated_by.iter().any(|x| x == p)
        {
            return false;
        }
        true
    }
}

/// One line for people: what happened, to whom, between which peers, and why.
pub fn render(e: &EventLine) -> String {
    let t = if e.unix_time_ns != 0 {
        e.unix_time_ns
    } else {
        e.time_ns
    };
    let (secs, ms) = (t / 1_000_000_000, (t / 1_000_000) % 1000);
    // HH:MM:SS.mmm (UTC) for wall-clock times; seconds since boot otherwise.
    let when = if e.unix_time_ns != 0 {
        format!(
            "{:02}:{:02}:{:02}.{ms:03}",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60
        )
    } else {
        format!("{secs}.{ms:03}")
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
        (_, r) => match (&e.policy, e.rule) {
            (Some(p), Some(rule)) => format!("{r} ({p}, rule {rule})"),
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

/// Prints the events of `file` that match, then, with `follow`, every new one as the agent
/// writes it (across rotations), until interrupted.
pub fn stream(
    file: &Path,
    filter: &Filter,
    output: Output,
    follow: bool,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let mut f = File::open(file).with_context(|| {
        format!(
            "opening the events file {} (is the agent running with --events-file?)",
            file.display()
        )
    })?;
    let mut inode = f.metadata()?.ino();
    let mut reader = BufReader::new(f.try_clone()?);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            emit(&line, filter, output, out)?;
            continue;
        }
        if !follow {
            if n > 0 {
                emit(&line, filter, output, out)?;
            }
            return Ok(());
        }
        // At the end: keep a partial line for later, and reopen if the agent rotated the file.
        if n > 0 {
            let back = n as i64;
            reader.seek(SeekFrom::Current(-back))?;
        }
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(meta) = std::fs::metadata(file) {
            let pos = reader.stream_position()?;
            if meta.ino() != inode || meta.len() < pos {
                f = File::open(file)?;
                inode = f.metadata()?.ino();
                reader = BufReader::new(f.try_clone()?);
            }
        }
    }
}

fn emit(line: &str, filter: &Filter, output: Output, out: &mut dyn std::io::Write) -> Result<()> {
    let Ok(e) = serde_json::from_str::<EventLine>(line.trim_end()) else {
        return Ok(()); // not an event line (or a future format): skip it
    };
    if !filter.matches(&e) {
        return Ok(());
    }
    match output {
        Output::Json => writeln!(out, "{}", line.trim_end())?,
        Output::Text => writeln!(out, "{}", render(&e))?,
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> EventLine {
        EventLine {
            time_ns: 1_700_000_000_123_000_000,
            unix_time_ns: 0,
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
            isolated_by: vec!["x/deny".into(), "x/allow-c".into()],
        }
    }

    #[test]
    fn filters_by_every_field() {
        let e = ev();
        assert!(Filter::default().matches(&e));
        let f = |mut g: Filter, edit: fn(&mut Filter)| {
            edit(&mut g);
            g.matches(&e)
        };
        assert!(f(Filter::default(), |g| g.namespace = Some("x".into())));
        assert!(!f(Filter::default(), |g| g.namespace = Some("y".into())));
        assert!(f(Filter::default(), |g| g.pod = Some("x/b".into())));
        assert!(f(Filter::default(), |g| g.pod = Some("b".into())));
        assert!(!f(Filter::default(), |g| g.pod = Some("a".into())));
        assert!(f(Filter::default(), |g| g.direction = Some("Ingress".into())));
        assert!(!f(Filter::default(), |g| g.direction = Some("egress".into())));
        assert!(f(Filter::default(), |g| g.verdict = Some("drop".into())));
        assert!(!f(Filter::default(), |g| g.verdict = Some("allow".into())));
        assert!(f(Filter::default(), |g| g.policy = Some("x/deny".into())));
        assert!(!f(Filter::default(), |g| g.policy = Some("x/other".into())));
    }

    #[test]
    fn text_names_endpoint_peer_tuple_and_why() {
        let t = render(&ev());
        assert!(
            t.starts_with("1700000000.123 node-1 drop  ingress x/b <- x/a"),
            "{t}"
        );
        assert!(t.contains("TCP 10.0.0.1:40000 > 10.0.0.2:80"), "{t}");
        assert!(
            t.ends_with("no rule allows it; isolated by x/deny, x/allow-c"),
            "{t}"
        );
        let mut e = ev();
        e.peer = None;
        e.peer_blocks = vec!["192.0.2.0/24 except 192.0.2.128/25".into()];
        e.reason = "denied-by-rule".into();
        e.policy = Some("x/p".into());
        e.rule = Some(2);
        let t = render(&e);
        assert!(
            t.contains("<- ipBlock 192.0.2.0/24 except 192.0.2.128/25"),
            "{t}"
        );
        assert!(t.ends_with("denied-by-rule (x/p, rule 2)"), "{t}");
    }

    #[test]
    fn reads_a_file_and_skips_what_is_not_an_event() {
        let dir = std::env::temp_dir().join(format!("enforcer-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let mut e2 = ev();
        e2.endpoint = Some("y/c".into());
        let text = format!(
            "{}\nnot json\n{}\n",
            serde_json::to_string(&serde_json::json!({
                "time_ns": 1, "node": "n", "endpoint": "x/b", "direction": "ingress",
                "verdict": "drop", "reason": "no-rule-allows", "protocol": "TCP",
                "src": "10.0.0.1", "src_port": 1, "dst": "10.0.0.2", "dst_port": 80,
                "peer": null, "policy": null, "rule": null, "isolated_by": [], "extra": 1
            }))
            .unwrap(),
            serde_json::to_string(&serde_json::json!({
                "time_ns": 2, "node": "n", "endpoint": "y/c", "direction": "egress",
                "verdict": "drop", "reason": "no-rule-allows", "protocol": "UDP",
                "src": "10.0.0.3", "src_port": 1, "dst": "10.0.0.2", "dst_port": 53,
                "peer": null, "policy": null, "rule": null, "isolated_by": []
            }))
            .unwrap()
        );
        std::fs::write(&path, text).unwrap();
        let mut out = Vec::new();
        let filter = Filter {
            namespace: Some("y".into()),
            ..Filter::default()
        };
        stream(&path, &filter, Output::Json, false, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("\"y/c\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
