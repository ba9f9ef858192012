//! `maps dump` names what it shows: the endpoints' pods, identities and policy peers by what
//! they stand for (numbers with `--numeric`), and the flows conntrack holds with both ends and
//! the rule that admitted them (`--pod` filters). A real agent on a throwaway node (see
//! agent_lab). Needs root.

mod agent_lab;

use agent_lab::*;
use serde_json::Value;

const ALLOW_SELF: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-self, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: a}}}]
      ports: [{port: 8080}]
"#;

fn text(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let bpffs = lab.bpffs.to_string_lossy().into_owned();
    let mut all = vec!["maps", "dump", "--bpffs", &bpffs];
    all.extend_from_slice(args);
    let out = lab.cli(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn maps_dump_names_pods_peers_and_the_flows_with_their_rule() {
    let mut lab = Lab::new("names");
    lab.write("cluster.yaml", CLUSTER);
    lab.write("policy.yaml", DENY_INGRESS);
    lab.write("allow.yaml", ALLOW_SELF);
    lab.start(&[]);
    lab.wait_status("installed", |s| s["endpoints"] == 1);
    let ifindex = {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.node_ns, "-json", "link", "show", "lxc-pod"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["ifindex"].as_u64().unwrap().to_string()
    };

    // The endpoint names its pod; the address, its pod and identity; the policy, its peer.
    let d = lab.dump();
    assert_eq!(d["endpoints"][&ifindex]["pod"], "x/a", "{d:#}");
    assert_eq!(d["identities"][POD_IP]["pod"], "x/a");
    assert_eq!(d["identities"][POD_IP]["identity"], "x {app=a}");
    let peers: Vec<&str> = d["policy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    assert!(peers.contains(&"x {app=a}"), "{peers:?}");
    assert!(peers.contains(&"host"), "{peers:?}");
    let numeric = lab.dump_with(&["--numeric"]);
    let peers: Vec<String> = numeric["policy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap().to_string())
        .collect();
    assert!(
        peers.iter().any(|p| p.parse::<u32>().is_ok()),
        "--numeric: {peers:?}"
    );
    assert!(
        numeric["policy"][0]["policy"]
            .as_str()
            .unwrap()
            .starts_with('#')
    );

    // A datagram from the node to the pod: admitted by the node's own rule, tracked.
    sh(&[
        "nsenter",
        &format!("--net=/run/netns/{}", lab.node_ns),
        "bash",
        "-c",
        &format!("echo x > /dev/udp/{POD_IP}/9"),
    ]);
    let mut flows = Value::Null;
    for _ in 0..100 {
        flows = lab.dump_with(&["conntrack"])["conntrack"]["flows"].clone();
        if flows.as_array().is_some_and(|f| !f.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let f = flows
        .as_array()
        .and_then(|f| f.iter().find(|f| f["server"]["port"] == 9))
        .unwrap_or_else(|| panic!("no flow to port 9: {flows:#}"));
    assert_eq!(f["endpoint"], "x/a", "{f:#}");
    assert_eq!(f["direction"], "ingress");
    assert_eq!(f["protocol"], "UDP");
    assert_eq!(f["server"]["name"], "x/a");
    assert_eq!(f["server"]["address"], POD_IP);
    assert_eq!(f["client"]["name"], "host");
    assert_eq!(f["policy"], "<host>");
    assert_eq!(f["state"], "new");
    // The age counts from the flow's first packet (a datapath that left `created_ns` unset
    // would give the time since boot).
    let (age, idle) = (f["age_seconds"].as_u64(), f["idle_seconds"].as_u64());
    assert!(
        age.zip(idle).is_some_and(|(a, i)| a >= i && a < 120),
        "{f:#}"
    );

    let (code, table, _) = text(&lab, &["conntrack"]);
    assert_eq!(code, 0);
    let line = table
        .lines()
        .find(|l| l.contains(&format!("x/a {POD_IP}:9")))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.starts_with("UDP"), "{line}");
    assert!(
        line.contains("ingress x/a") && line.contains("<host> rule"),
        "{line}"
    );
    let (code, endpoints, _) = text(&lab, &["endpoints"]);
    assert_eq!(code, 0);
    assert!(
        endpoints.lines().any(|l| l.trim_end().ends_with("x/a")),
        "{endpoints}"
    );

    // --pod keeps that pod's flows; a pod the agent does not know is an error.
    let only = lab.dump_with(&["conntrack", "--pod", "x/a"]);
    assert!(!only["conntrack"]["flows"].as_array().unwrap().is_empty());
    let (code, _, err) = text(&lab, &["conntrack", "--pod", "x/nobody"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--pod x/nobody: the agent knows no such pod"),
        "{err}"
    );
    let (code, _, err) = text(&lab, &["--pod", "nobody"]);
    assert_eq!(code, 2, "{err}");
    assert!(lab.stop());
}
