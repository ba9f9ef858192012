//! Objects from files are decoded strictly (a misspelt field, an unknown kind, a namespace the
//! cluster lacks: refused, named), through the command line: `lab check`, `explain
//! --manifests`, and `lab apply` on a lab left running (all or nothing; `unchanged`), which
//! needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_enforcer");

fn enforcer(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .output()
        .expect("running enforcer")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A folder of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("enforcer-strict-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SCENARIO: &str = "namespaces: [{name: x}]\n\
pods:\n  - {namespace: x, name: a, labels: {app: a}}\n  - {namespace: x, name: b, labels: {app: b}, ports: [{port: 80, protocol: TCP}]}\n\
probes: [{from: x/a, to: x/b, port: 80, protocol: TCP}]\n";

#[test]
fn lab_check_names_a_misspelt_field_and_a_missing_namespace() {
    let d = TempDir::new("check");
    let ok = d.write("ok.yaml", SCENARIO);
    let o = enforcer(&["lab", "check", path(&ok)]);
    assert!(o.status.success(), "{}", text(&o));

    let typo = d.write(
        "typo.yaml",
        &format!(
            "{SCENARIO}policies:\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {{name: p, namespace: x}}\n    spec:\n      podSelector: {{}}\n      ingress: [{{from: [{{podSelector: {{matchLabel: {{app: a}}}}}}]}}]\n"
        ),
    );
    let o = enforcer(&["lab", "check", path(&typo)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("typo.yaml: bad scenario: policies[0]: NetworkPolicy x/p: spec.ingress[0].from[0].podSelector.matchLabel: unknown field \"matchLabel\" (did you mean matchLabels?)"),
        "{err}"
    );

    let ghost = d.write(
        "ghost.yaml",
        &format!(
            "{SCENARIO}steps:\n  - apply:\n      - apiVersion: networking.k8s.io/v1\n        kind: NetworkPolicy\n        metadata: {{name: p, namespace: ghost}}\n        spec: {{podSelector: {{}}}}\n"
        ),
    );
    let o = enforcer(&["lab", "check", path(&ghost)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("steps[0].apply[0].metadata.namespace: NetworkPolicy ghost/p: namespace \"ghost\" does not exist in the lab"),
        "{err}"
    );

    let kind = d.write(
        "kind.yaml",
        &format!(
            "{SCENARIO}policies:\n  - {{apiVersion: networking.k8s.io/v1, kind: NetworkPolcy, metadata: {{name: p, namespace: x}}}}\n"
        ),
    );
    let o = enforcer(&["lab", "check", path(&kind)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("(did you mean NetworkPolicy?)"),
        "{}",
        text(&o)
    );
}

const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n\
spec: {nodeName: n, containers: [{name: c, image: i}]}\nstatus: {podIPs: [{ip: 10.9.0.1}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\n\
spec: {nodeName: n, containers: [{name: c, image: i}]}\nstatus: {podIPs: [{ip: 10.9.0.2}]}\n";

#[test]
fn explain_refuses_a_misspelt_policy_and_one_in_a_missing_namespace() {
    let d = TempDir::new("explain");
    d.write("cluster.yaml", CLUSTER);
    let explain = || {
        enforcer(&[
            "explain",
            "--manifests",
            path(&d.0),
            "--from",
            "x/a",
            "--to",
            "x/b",
            "--port",
            "80",
        ])
    };
    let o = explain();
    assert!(o.status.success(), "{}", text(&o));

    // `ingres:` would make this a deny-all for x/b.
    d.write(
        "p.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingres: [{}]\n",
    );
    let o = explain();
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("p.yaml: document 1: NetworkPolicy x/p: spec.ingres: unknown field \"ingres\" (did you mean ingress?)"),
        "{err}"
    );

    std::fs::remove_file(d.0.join("p.yaml")).unwrap();
    d.write(
        "q.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: ghost}\nspec: {podSelector: {}}\n",
    );
    let o = explain();
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "NetworkPolicy ghost/q: metadata.namespace: namespace \"ghost\" does not exist"
        ),
        "{err}"
    );
}

/// Takes a lab down on drop, also when an assertion failed.
struct LabUp(String);

impl Drop for LabUp {
    fn drop(&mut self) {
        let o = enforcer(&["lab", "down", &self.0]);
        assert!(o.status.success(), "lab down: {}", text(&o));
    }
}

fn probe(name: &str) -> String {
    let o = enforcer(&["lab", "probe", name, "x/a", "x/b", "80/TCP"]);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const DENY_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n";

const DENY_B_ICMP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: ICMP}]}]}\n";

const ALLOW_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-b, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}, ingress: [{}]}\n";

#[test]
fn lab_apply_is_all_or_nothing_and_says_unchanged() {
    let _guard = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    common::require_root("the lab apply test");
    let d = TempDir::new("apply");
    let scenario = d.write("s.yaml", SCENARIO);
    let name = format!("strict-{}", std::process::id());
    let up = enforcer(&["lab", "up", path(&scenario), "--name", &name]);
    assert!(up.status.success(), "{}", text(&up));
    let _down = LabUp(name.clone());
    assert!(probe(&name).contains(": allowed"), "no policy yet");
    let run = String::from_utf8_lossy(&up.stdout).into_owned();
    let at = run.find("(run enf-").expect("up names its run") + 5;
    let manifests = PathBuf::from("/run/enforcer-lab")
        .join(&run[at..at + 10])
        .join("manifests");
    let folder = || {
        let mut v: Vec<(String, String)> = std::fs::read_dir(&manifests)
            .unwrap()
            .flatten()
            .map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (n, std::fs::read_to_string(e.path()).unwrap_or_default())
            })
            .filter(|(n, _)| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };

    let apply = |file: &Path| enforcer(&["lab", "apply", &name, path(file)]);
    let deny = d.write("deny.yaml", DENY_B);
    let o = apply(&deny);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("networkpolicy x/deny-b created"),
        "{}",
        text(&o)
    );
    assert!(
        probe(&name).contains(": denied by policy"),
        "deny-b in force"
    );

    // The same content again: unchanged, nothing written.
    let o = apply(&deny);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "networkpolicy x/deny-b unchanged\n",
        "{}",
        text(&o)
    );

    // A file the agent would reject (ICMP is no NetworkPolicy protocol) beside a good object:
    // refused before anything is written (no generation reaches the agents, so allow-b is
    // never in force, not even for a moment), and the lab is as it was.
    let generation = || std::fs::read_to_string(manifests.join(".generation")).unwrap();
    let (before, generation_before) = (folder(), generation());
    let bad = d.write("bad.yaml", &format!("{ALLOW_B}---\n{DENY_B_ICMP}"));
    let o = apply(&bad);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rejected"), "{err}");
    assert!(err.contains("spec.ingress[0].ports[0].protocol"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert_eq!(folder(), before, "the manifests are as they were");
    assert_eq!(generation(), generation_before, "nothing was written");
    assert!(
        probe(&name).contains(": denied by policy"),
        "allow-b not in force"
    );

    // Should the agents reject a file all the same (here: the lab's own check is off), the lab
    // puts back what was there and the next apply starts from it.
    let o = Command::new(EXE)
        .args(["lab", "apply", &name, path(&bad)])
        .env("ENFORCER_LAB_NO_AGENT_CHECK", "1")
        .output()
        .expect("running enforcer");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rejected"), "{err}");
    assert!(err.contains("spec.ingress[0].ports[0].protocol"), "{err}");
    assert!(err.contains(&format!("lab {name} is as it was")), "{err}");
    assert_eq!(folder(), before, "the manifests are as they were");
    assert!(
        probe(&name).contains(": denied by policy"),
        "allow-b not in force"
    );

    // A misspelt file and one in a missing namespace are refused before anything is written.
    let typo = d.write("typo.yaml", &ALLOW_B.replace("ingress:", "ingres:"));
    let o = apply(&typo);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("spec.ingres: unknown field \"ingres\" (did you mean ingress?)"),
        "{}",
        text(&o)
    );
    let ghost = d.write(
        "ghost.yaml",
        &ALLOW_B.replace("namespace: x", "namespace: ghost"),
    );
    let o = apply(&ghost);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("namespace \"ghost\" does not exist"),
        "{}",
        text(&o)
    );
    assert_eq!(folder(), before);

    // The next good apply works: allow-b created, deny-b unchanged.
    let good = d.write("good.yaml", &format!("{DENY_B}---\n{ALLOW_B}"));
    let o = apply(&good);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("networkpolicy x/deny-b unchanged\nnetworkpolicy x/allow-b created\n"),
        "{}",
        text(&o)
    );
    assert!(probe(&name).contains(": allowed"), "allow-b in force");
}
