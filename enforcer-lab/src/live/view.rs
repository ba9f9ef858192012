//! What `lab up` and `lab list` print: for people, tables and commands to try; with
//! `--output json`, one document in which what has a name is a map keyed by it (nodes, pods,
//! hosts, Services, labs) and what has an order stays a list (addresses, ports).

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::probe::split_port;
use super::{KUBECONFIG_FILE, STATE_FILE, shown_cmd};
use crate::Output;
use crate::plan::Plan;
use crate::runs::{self, RunInfo};
use crate::{scenario, services};

/// kubectl as `cargo xtask setup` built it (else whatever `kubectl` is on PATH).
fn kubectl() -> String {
    control_plane::Binaries::locate()
        .map(|b| b.kubectl.display().to_string())
        .unwrap_or_else(|_| "kubectl".into())
}

/// What `up` prints once the lab is up.
pub fn usage(name: &str, plan: &Plan, dir: &Path) -> String {
    use std::fmt::Write as _;
    let cmd = shown_cmd();
    let mut out = String::new();
    let n_svc = plan.services.len();
    let _ = writeln!(
        out,
        "lab {name} is up (run {}): {} node{}, {} pod{}, {} host{}, {n_svc} Service{}\n",
        plan.prefix.trim_end_matches('-'),
        plan.nodes.len(),
        plural(plan.nodes.len()),
        plan.pods.len(),
        plural(plan.pods.len()),
        plan.hosts.len(),
        plural(plan.hosts.len()),
        plural(n_svc),
    );
    let mut rows = vec![vec![
        "NODE".to_string(),
        "NETNS".into(),
        "BPFFS".into(),
        "FABRIC".into(),
        "CNI".into(),
    ]];
    for n in &plan.nodes {
        rows.push(vec![
            n.name.clone(),
            n.netns.clone(),
            runs::bpffs_dir(&plan.prefix)
                .join(&n.name)
                .display()
                .to_string(),
            if plan.fabric.is_some() {
                ips_text(&n.fabric_ips)
            } else {
                "-".into()
            },
            if n.is_bridge() {
                let ips: Vec<String> = n
                    .bridge_ips
                    .iter()
                    .filter_map(|c| c.nth(1).map(|gw| format!("{gw}/{}", c.len)))
                    .collect();
                format!("bridge cni0 {}", ips.join(","))
            } else {
                "routed".into()
            },
        ]);
    }
    table(&mut out, &rows);
    let mut rows = vec![vec![
        "POD".to_string(),
        "NODE".into(),
        "ADDRESSES".into(),
        "LABELS".into(),
        "PORTS".into(),
    ]];
    for p in &plan.pods {
        rows.push(vec![
            p.key(),
            plan.nodes[p.node].name.clone(),
            ips_text(&p.ips),
            p.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            ports_text(&p.ports),
        ]);
    }
    table(&mut out, &rows);
    if !plan.hosts.is_empty() {
        let mut rows = vec![vec!["HOST".to_string(), "ADDRESSES".into(), "PORTS".into()]];
        for h in &plan.hosts {
            rows.push(vec![h.name.clone(), ips_text(&h.ips), ports_text(&h.ports)]);
        }
        table(&mut out, &rows);
    }
    if !plan.services.is_empty() {
        let mut rows = vec![vec![
            "SERVICE".to_string(),
            "CLUSTER-IP".into(),
            "SELECTOR".into(),
            "PORTS".into(),
        ]];
        for s in &plan.services {
            rows.push(vec![
                s.key(),
                s.cluster_ip.to_string(),
                s.selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                s.ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}{}/{}->{}",
                            p.name.as_ref().map(|n| format!("{n} ")).unwrap_or_default(),
                            p.port,
                            p.protocol,
                            p.target_port
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        table(&mut out, &rows);
    }
    let node = &plan.nodes[0].name;
    let example = example_probe(plan);
    let _ = writeln!(out, "Try:");
    if let Some((from, to, port)) = &example {
        let _ = writeln!(out, "  {cmd} probe {name} {from} {to} {port}");
    }
    let with_endpoints = plan.services.iter().find(|s| {
        plan.pods
            .iter()
            .any(|p| p.namespace == s.namespace && services::selects(&s.selector, &p.labels))
    });
    if let (Some(s), Some(from)) = (with_endpoints, plan.pods.first()) {
        let p = &s.ports[0];
        let _ = writeln!(
            out,
            "  {cmd} probe {name} {} svc:{} {}/{}",
            from.key(),
            s.key(),
            p.port,
            p.protocol
        );
    }
    // A forged source: the example's target pretending to be a third pod (or the node).
    if let Some((from, to, _)) = &example {
        let src_ep = plan.endpoints().find(|ep| &plan.name_of(*ep) == from);
        let forged = plan
            .pods
            .iter()
            .filter(|p| &p.key() != from && &p.key() != to)
            .flat_map(|p| p.ips.iter())
            .chain(plan.nodes[0].fabric_ips.iter())
            .find(|ip| {
                src_ep.is_some_and(|e| plan.ips_of(e).iter().any(|a| a.is_ipv4() == ip.is_ipv4()))
            });
        if let Some(ip) = forged {
            let _ = writeln!(
                out,
                "  {cmd} forge {name} {from} {to} 80/UDP --source {ip}     (a forged source)"
            );
        }
    }
    if plan.control_plane.is_some() {
        let _ = writeln!(
            out,
            "  {} --kubeconfig {} get pods -A -o wide     (the lab's API server)",
            kubectl(),
            dir.join(KUBECONFIG_FILE).display()
        );
    }
    let _ = writeln!(out, "  {cmd} exec {name} {node} -- maps dump");
    if let Some((from, to, port)) = &example {
        let (number, proto) = split_port(port);
        let _ = writeln!(
            out,
            "  {cmd} exec {name} {node} -- explain --from {from} --to {to} --port {number} --protocol {proto}"
        );
    }
    let _ = writeln!(
        out,
        "  {cmd} apply {name} policy.yaml     (NetworkPolicies, Services; `delete` takes them away)"
    );
    let _ = writeln!(out, "  {cmd} down {name}");
    let _ = writeln!(
        out,
        "\nThe agents run until `{cmd} down {name}`. `exec` runs the enforcer in a node's network \
         namespace with ENFORCER_NODE, ENFORCER_BPFFS, ENFORCER_MANIFESTS and \
         ENFORCER_EVENTS_FILE set for that node. Agent logs, events and manifests: {}",
        dir.display()
    );
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn ips_text(ips: &[std::net::IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn ports_text(ports: &[scenario::PortSpec]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    ports
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{n} {}/{}", p.port, p.protocol),
            None => format!("{}/{}", p.port, p.protocol),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(out: &mut String, rows: &[Vec<String>]) {
    use std::fmt::Write as _;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push('\n');
}

/// A probe worth trying: from the first pod to another pod that serves something.
fn example_probe(plan: &Plan) -> Option<(String, String, String)> {
    let from = plan.pods.first()?;
    let to = plan
        .pods
        .iter()
        .skip(1)
        .find(|p| !p.ports.is_empty())
        .or_else(|| plan.pods.get(1))?;
    let port = to.ports.first().map_or("80/TCP".to_string(), |p| {
        format!("{}/{}", p.port, p.protocol)
    });
    Some((from.key(), to.key(), port))
}

/// `lab up --output json`: the lab, its nodes, pods, hosts and Services, each keyed by name.
pub fn up_json(name: &str, plan: &Plan, dir: &Path) -> Value {
    let ports = |ports: &[scenario::PortSpec]| -> Value {
        ports
            .iter()
            .map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol.as_str()}))
            .collect()
    };
    let nodes: Map<String, Value> = plan
        .nodes
        .iter()
        .map(|n| {
            let bpffs = runs::bpffs_dir(&plan.prefix).join(&n.name);
            let bridge: Vec<String> = n
                .bridge_ips
                .iter()
                .filter_map(|c| c.nth(1).map(|gw| format!("{gw}/{}", c.len)))
                .collect();
            let v = json!({
                "netns": n.netns,
                "bpffs": bpffs.display().to_string(),
                "addresses": n.fabric_ips,
                "cni": if n.is_bridge() { "bridge" } else { "routed" },
                "bridge_addresses": bridge,
            });
            (n.name.clone(), v)
        })
        .collect();
    let pods: Map<String, Value> = plan
        .pods
        .iter()
        .map(|p| {
            let v = json!({
                "node": plan.nodes[p.node].name,
                "netns": p.netns,
                "addresses": p.ips,
                "labels": p.labels,
                "ports": ports(&p.ports),
            });
            (p.key(), v)
        })
        .collect();
    let hosts: Map<String, Value> = plan
        .hosts
        .iter()
        .map(|h| {
            let v = json!({"netns": h.netns, "addresses": h.ips, "ports": ports(&h.ports)});
            (h.name.clone(), v)
        })
        .collect();
    let services: Map<String, Value> = plan
        .services
        .iter()
        .map(|s| {
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| {
                    json!({"name": p.name, "port": p.port, "protocol": p.protocol.as_str(),
                    "target_port": match &p.target_port {
                        scenario::PortRef::Number(n) => json!(n),
                        scenario::PortRef::Name(n) => json!(n),
                    }})
                })
                .collect();
            let v = json!({"cluster_ip": s.cluster_ip, "selector": s.selector, "ports": ports});
            (s.key(), v)
        })
        .collect();
    let control_plane = plan.control_plane.as_ref().map(|cp| {
        json!({
            "netns": cp.netns,
            "server": format!("https://{}:{}", cp.ip, control_plane::API_PORT),
            "kubeconfig": dir.join(KUBECONFIG_FILE).display().to_string(),
            "kubectl": kubectl(),
        })
    });
    json!({
        "name": name,
        "run": plan.prefix.trim_end_matches('-'),
        "files": dir.display().to_string(),
        "control_plane": control_plane,
        "nodes": nodes,
        "pods": pods,
        "hosts": hosts,
        "services": services,
    })
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// One lab run as `lab list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    /// What commands find it by: its name, or its run when it has none (`lab run`).
    #[serde(skip)]
    pub key: String,
    pub name: Option<String>,
    pub run: String,
    /// up, starting, up (an agent died), running (a `lab run`), stale.
    pub state: &'static str,
    pub nodes: Option<Vec<String>>,
    pub age_seconds: Option<u64>,
    pub owner: Option<u32>,
    pub namespaces: usize,
}

fn listed(r: &RunInfo, now: std::time::SystemTime) -> Listed {
    let started = r
        .meta
        .as_ref()
        .map(|m| std::time::UNIX_EPOCH + Duration::from_secs(m.started))
        .or_else(|| {
            std::fs::metadata(runs::run_dir(&r.prefix))
                .and_then(|m| m.modified())
                .ok()
        });
    let state = match (r.alive, r.meta.as_ref().map(|m| m.kind.as_str())) {
        (true, Some("up")) => {
            let dir = runs::run_dir(&r.prefix);
            if !dir.join(STATE_FILE).exists() {
                "starting"
            } else if dir.join("problems").exists() {
                "up (an agent died)"
            } else {
                "up"
            }
        }
        (true, _) => "running",
        (false, _) => "stale",
    };
    let run = r.prefix.trim_end_matches('-').to_string();
    let name = r.meta.as_ref().and_then(|m| m.name.clone());
    Listed {
        key: name.clone().unwrap_or_else(|| run.clone()),
        name,
        run,
        state,
        nodes: r.meta.as_ref().map(|m| m.nodes.clone()),
        age_seconds: started
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs()),
        owner: r.owner,
        namespaces: r.netns.len(),
    }
}

/// `lab list --output json`: `{"labs": {NAME: {...}}}`, keyed by name (by run for a `lab run`).
pub fn list_json(labs: &[Listed]) -> Value {
    let map: Map<String, Value> = labs
        .iter()
        .map(|l| {
            (
                l.key.clone(),
                serde_json::to_value(l).expect("a lab is JSON"),
            )
        })
        .collect();
    json!({ "labs": map })
}

/// `lab list` for people.
pub fn list_text(labs: &[Listed]) -> String {
    if labs.is_empty() {
        return "no lab runs\n".into();
    }
    let mut rows = vec![
        [
            "NAME",
            "RUN",
            "STATE",
            "NODES",
            "AGE",
            "OWNER",
            "NAMESPACES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for l in labs {
        rows.push(vec![
            l.name.clone().unwrap_or_else(|| "-".into()),
            l.run.clone(),
            l.state.to_string(),
            l.nodes.as_ref().map_or("?".into(), |n| n.len().to_string()),
            l.age_seconds.map_or("?".into(), age),
            l.owner.map_or("-".into(), |p| p.to_string()),
            l.namespaces.to_string(),
        ]);
    }
    let mut out = String::new();
    table(&mut out, &rows);
    let mut out = out.trim_end_matches('\n').to_string();
    out.push('\n');
    if labs.iter().any(|l| l.state == "stale") {
        out.push_str(&format!(
            "(stale runs' owners are gone: `{} down` removes them)\n",
            shown_cmd()
        ));
    }
    out
}

/// `lab list`.
pub fn list(output: Output) -> i32 {
    let now = std::time::SystemTime::now();
    let labs: Vec<Listed> = runs::list().iter().map(|r| listed(r, now)).collect();
    match output {
        Output::Table => print!("{}", list_text(&labs)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&list_json(&labs)).expect("JSON")
        ),
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load;

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(10_000), "2h");
    }

    #[test]
    fn usage_names_pods_services_and_commands() {
        let text = "
nodes: [n1, n2]
pods:
  - {namespace: x, name: a, labels: {app: a}}
  - {namespace: x, name: b, node: n2, ports: [{name: http, port: 80}]}
services: [{namespace: x, name: s, selector: {app: a}, ports: [{port: 8080, targetPort: 80}]}]
";
        let plan = load(text, "t", "enf-0a0b0c-").unwrap();
        let u = usage("t1", &plan, Path::new("/run/enforcer-lab/enf-0a0b0c"));
        assert!(
            u.starts_with("lab t1 is up (run enf-0a0b0c): 2 nodes, 2 pods, 0 hosts, 1 Service"),
            "{u}"
        );
        assert!(u.contains("x/b  n2    10.42.2.10"), "{u}");
        assert!(
            u.contains("x/s      10.96.0.10  app=a     8080/TCP->80"),
            "{u}"
        );
        assert!(u.contains(" probe t1 x/a x/b 80/TCP"), "{u}");
        assert!(u.contains(" probe t1 x/a svc:x/s 8080/TCP"), "{u}");
        assert!(u.contains(" exec t1 n1 -- maps dump"), "{u}");
        assert!(u.contains(" down t1"), "{u}");
    }

    #[test]
    fn up_json_keys_what_has_a_name() {
        let text = "
nodes: [n1, {name: n2, cni: bridge}]
pods:
  - {namespace: x, name: a, labels: {app: a}}
  - {namespace: x, name: b, node: n2, ports: [{name: http, port: 80}]}
hosts: [{name: ext-1, ips: [192.0.2.10], ports: [{port: 80, protocol: TCP}]}]
services: [{namespace: x, name: s, selector: {app: a}, ports: [{port: 8080, targetPort: 80}]}]
";
        let plan = load(text, "t", "enf-0a0b0c-").unwrap();
        let j = up_json("t1", &plan, Path::new("/run/enforcer-lab/enf-0a0b0c"));
        assert_eq!(j["name"], "t1");
        assert_eq!(j["run"], "enf-0a0b0c");
        assert_eq!(j["nodes"]["n1"]["cni"], "routed");
        assert_eq!(j["nodes"]["n2"]["cni"], "bridge");
        assert_eq!(j["nodes"]["n2"]["bpffs"], "/sys/fs/bpf/enf-0a0b0c/n2");
        assert_eq!(j["pods"]["x/b"]["node"], "n2");
        assert_eq!(j["pods"]["x/b"]["addresses"], json!(["10.42.2.10"]));
        assert_eq!(
            j["pods"]["x/b"]["ports"],
            json!([{"name": "http", "port": 80, "protocol": "TCP"}])
        );
        assert_eq!(j["pods"]["x/a"]["labels"], json!({"app": "a"}));
        assert_eq!(j["hosts"]["ext-1"]["addresses"], json!(["192.0.2.10"]));
        assert_eq!(j["services"]["x/s"]["cluster_ip"], "10.96.0.10");
        assert_eq!(j["services"]["x/s"]["ports"][0]["target_port"], 80);
    }

    #[test]
    fn list_json_keys_labs_by_name_or_run() {
        let l = |name: Option<&str>, run: &str, state| Listed {
            key: name.unwrap_or(run).to_string(),
            name: name.map(String::from),
            run: run.into(),
            state,
            nodes: Some(vec!["node-1".into()]),
            age_seconds: Some(5),
            owner: Some(42),
            namespaces: 3,
        };
        let labs = [
            l(Some("demo"), "enf-0a0b0c", "up"),
            l(None, "enf-1a2b3c", "stale"),
        ];
        let j = list_json(&labs);
        assert_eq!(
            j["labs"]["demo"],
            json!({"name": "demo", "run": "enf-0a0b0c", "state": "up", "nodes": ["node-1"],
                   "age_seconds": 5, "owner": 42, "namespaces": 3})
        );
        assert_eq!(j["labs"]["enf-1a2b3c"]["state"], "stale");
        assert_eq!(j["labs"]["enf-1a2b3c"]["name"], Value::Null);
        let t = list_text(&labs);
        assert!(t.starts_with("NAME  RUN"), "{t}");
        assert!(t.contains("\n-     enf-1a2b3c  stale"), "{t}");
        assert!(
            t.contains("`down` removes them") || t.contains(" down` removes them"),
            "{t}"
        );
        assert_eq!(list_text(&[]), "no lab runs\n");
    }
}
