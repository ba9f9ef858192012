//! The install bundle and the agent against the real control plane: etcd and kube-apiserver
//! built from source by `cargo xtask setup` and started by the `control-plane` crate (TLS,
//! Node,RBAC authorization, the default admission plugins, ServiceAccount tokens).
//!
//! - `kubectl apply -f deploy/` is accepted, field by field (the server's strict validation
//!   refuses a misspelt field);
//! - a token of the bundle's ServiceAccount lists and watches everything the agent reads and is
//!   refused (403) every write and every other read;
//! - `enforcer run --source kube` with that token syncs a NetworkPolicy written through kubectl
//!   into its maps, and its deletion.
//!
//! Needs root (network namespaces, BPF). Everything is removed on exit, also on failure.

mod agent_lab;
mod kube_common;

use std::path::Path;
use std::time::{Duration, Instant};

use agent_lab::*;
use control_plane::Options;
use kube_common::*;

const SA_USER: &str = "system:serviceaccount:enforcer-system:enforcer";

#[test]
fn the_bundle_is_accepted_and_its_service_account_reads_but_never_writes() {
    let cp = start(Options::default());

    // The whole bundle, validated field by field by the real schema.
    let applied = apply_bundle(&cp);
    for object in [
        "namespace/enforcer-system created",
        "serviceaccount/enforcer created",
        "clusterrole.rbac.authorization.k8s.io/enforcer created",
        "clusterrolebinding.rbac.authorization.k8s.io/enforcer created",
        "daemonset.apps/enforcer created",
    ] {
        assert!(applied.contains(object), "{object}: {applied}");
    }
    // That validation is strict: a misspelt field is refused, not dropped.
    let ds = std::fs::read_to_string(deploy_dir().join("20-daemonset.yaml")).unwrap();
    assert!(ds.contains("hostNetwork: true"), "{ds}");
    let typo = ds.replace("hostNetwork: true", "hostNetwrok: true");
    let out = with_stdin(
        cp.kubectl().args(["apply", "--dry-run=server", "-f", "-"]),
        &typo,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field \"spec.template.spec.hostNetwrok\""),
        "a misspelt field is refused: {err}"
    );

    // The agent's credentials: a token of the bundle's ServiceAccount.
    let kc = cp
        .service_account_kubeconfig("enforcer-system", "enforcer")
        .unwrap_or_else(|e| panic!("{e}"));
    let as_agent = |args: &[&str]| output(cp.kubectl_with(&kc).args(args));
    let me = ok(
        &as_agent(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]),
        "auth whoami",
    );
    assert_eq!(me, SA_USER);

    // It may get, list and watch what the agent reads (deploy/10-rbac.yaml), cluster-wide.
    for path in [
        "/api/v1/namespaces",
        "/api/v1/pods",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ] {
        let list = ok(&as_agent(&["get", "--raw", path]), &format!("list {path}"));
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert!(
            list["kind"].as_str().is_some_and(|k| k.ends_with("List")),
            "{path}: {list}"
        );
        let watch = format!("{path}?watch=1&timeoutSeconds=1");
        ok(
            &as_agent(&["get", "--raw", &watch]),
            &format!("watch {path}"),
        );
    }
    ok(
        &as_agent(&["get", "--raw", "/api/v1/namespaces/enforcer-system"]),
        "get a namespace",
    );

    // Refused (403 Forbidden, the API's `... is forbidden: User "..." cannot ...`) every write,
    // and reads beyond its list; the same requests as admin pass (dry run), so the refusal is
    // RBAC's, not a bad request.
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec: {podSelector: {}}\n";
    let refused: &[(&[&str], Option<&str>)] = &[
        (&["create", "namespace", "intruder"], None),
        (&["annotate", "namespace", "default", "touched=yes"], None),
        (&["delete", "namespace", "enforcer-system"], None),
        (&["apply", "-f", "-"], Some(policy)),
        (
            &["create", "service", "clusterip", "s", "--tcp=80:80"],
            None,
        ),
        (
            &["delete", "daemonset", "enforcer", "-n", "enforcer-system"],
            None,
        ),
        (&["get", "secrets", "-A"], None),
        (&["get", "configmaps", "-n", "enforcer-system"], None),
    ];
    for (args, input) in refused {
        let run = |kubeconfig: &Path, extra: &[&str]| {
            let mut cmd = cp.kubectl_with(kubeconfig);
            cmd.args(*args).args(extra);
            match input {
                Some(text) => with_stdin(&mut cmd, text),
                None => output(&mut cmd),
            }
        };
        let out = run(&kc, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains(&format!("is forbidden: User \"{SA_USER}\" cannot")),
            "kubectl {args:?} as the agent is refused: {err}"
        );
        let dry = if args[0] == "get" {
            &[][..]
        } else {
            &["--dry-run=server"][..]
        };
        ok(
            &run(&cp.admin_kubeconfig(), dry),
            &format!("kubectl {args:?} as admin"),
        );
    }
}

/// Polls `maps dump` until the endpoints' modes are `want`.
fn wait_modes(lab: &Lab, want: (&str, &str), what: &str) {
    let want = vec![(want.0.to_string(), want.1.to_string())];
    let start = Instant::now();
    loop {
        let modes = endpoint_modes(&lab.dump());
        if modes == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: endpoint modes {modes:?}, want {want:?}; agent log:\n{}",
            std::fs::read_to_string(lab.dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_agent_syncs_policies_written_through_kubectl() {
    let mut lab = Lab::new("kube");
    // The control plane on the node namespace's loopback (dropped before the lab).
    let cp = start(Options {
        netns: Some(lab.node_ns.clone()),
        ..Default::default()
    });
    apply_bundle(&cp);
    // The pod as the scheduler and the kubelet would write it: spec.nodeName, then its
    // addresses through the status subresource.
    create_pod(&cp, POD_IP);

    let kc = cp
        .service_account_kubeconfig("enforcer-system", "enforcer")
        .unwrap_or_else(|e| panic!("{e}"));
    let kc = kc.to_string_lossy().into_owned();
    lab.start(&["--source", "kube", "--kubeconfig", &kc]);
    lab.wait_status("synced from the API, the pod's endpoint installed", |s| {
        s["endpoints"] == 1 && s["error"].is_null()
    });
    wait_modes(&lab, ("allow-all", "allow-all"), "no policy");

    ok(
        &with_stdin(cp.kubectl().args(["apply", "-f", "-"]), DENY_INGRESS),
        "applying the policy",
    );
    wait_modes(&lab, ("enforce", "allow-all"), "the policy applied");

    ok(
        &output(
            cp.kubectl()
                .args(["delete", "networkpolicy", "deny-ingress", "-n", "x"]),
        ),
        "deleting the policy",
    );
    wait_modes(&lab, ("allow-all", "allow-all"), "the policy deleted");

    assert!(lab.stop(), "the agent exits cleanly on SIGTERM");
}
