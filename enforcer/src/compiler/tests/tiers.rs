//! The ordered tiers, case by case (the property tests in the parent cover them at random).

use super::*;

const ADMIN_PASS_THEN_DENY: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pass-from-x}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
    - {action: Pass, from: [{namespaces: {matchLabels: {ns: x}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-all}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
    - {action: Deny, from: [{namespaces: {}}]}
"#;

#[test]
fn a_pass_skips_the_rest_of_its_tier_and_a_deny_is_attributed() {
    let c = with(ADMIN_PASS_THEN_DENY);
    // From y: the Deny at priority 20 decides.
    assert!(!check(&c, "y/c", "x/a", TCP, 80));
    // From x: passed on, nothing else isolates: allowed.
    assert!(check(&c, "x/b", "x/a", TCP, 80));
    let (state, node) = build(&c);
    let a = node.interfaces[&ObjectRef::new("x", "a")];
    let d = decide(
        &state,
        a,
        direction::INGRESS,
        "10.0.0.3".parse().unwrap(),
        TCP,
        80,
    );
    assert_eq!(d.reason, reason::DENY_RULE);
    assert_eq!(d.tier, enforcer_common::tier::ADMIN);
    let e = d.entry.expect("the deny rule");
    assert_eq!(
        (e.rule_index, e.action),
        (0, enforcer_common::POLICY_ACTION_DENY)
    );
    let d = decide(
        &state,
        a,
        direction::INGRESS,
        "10.0.0.2".parse().unwrap(),
        TCP,
        80,
    );
    assert_eq!(d.passes.len(), 1, "{d:?}");
    assert_eq!(d.reason, reason::ALLOWED_NOT_ISOLATED);
    // Selecting a pod does not isolate it; the tiers are flagged on the endpoint.
    let ep = &state.endpoints[&a];
    assert_eq!(ep.ingress_mode, mode::ALLOW_ALL);
    assert!(ep.has_tier(direction::INGRESS, enforcer_common::tier::ADMIN));
    assert!(!ep.tiered(direction::EGRESS));
}

#[test]
fn network_policy_decides_what_it_isolates_and_baseline_the_rest() {
    let baseline = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-deny}
spec:
  tier: Baseline
  priority: 0
  subject: {namespaces: {}}
  ingress:
    - {action: Deny, from: [{namespaces: {}}]}
"#;
    let c = with(baseline);
    assert!(!check(&c, "x/a", "x/b", TCP, 81), "baseline denies");
    // A NetworkPolicy that isolates b decides for it: the baseline is not consulted.
    let c = with(&format!(
        "{baseline}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: allow-a, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{pod: b}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: a}}}}}}]}}]}}\n"
    ));
    assert!(check(&c, "x/a", "x/b", TCP, 81));
    assert!(
        !check(&c, "y/c", "x/b", TCP, 81),
        "isolated: no rule allows c"
    );
    assert!(
        !check(&c, "x/b", "x/a", TCP, 80),
        "a still under the baseline"
    );
    let (state, node) = build(&c);
    let b = &state.endpoints[&node.interfaces[&ObjectRef::new("x", "b")]];
    assert!(!b.has_tier(direction::INGRESS, enforcer_common::tier::BASELINE));
}

#[test]
fn a_rule_for_any_port_ranked_first_wins_over_a_later_exact_port() {
    // Rule 0 denies every port from y; rule 1 accepts port 80 from everyone. The port-80
    // entry must carry rule 0's Deny for y (settled), not hide it.
    let c = with(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ordered}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
    - {action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}
    - {action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
"#,
    );
    assert!(!check(&c, "y/c", "x/a", TCP, 80));
    assert!(check(&c, "x/b", "x/a", TCP, 80));
}

#[test]
fn priority_ties_over_a_common_pod_are_reported() {
    let tie = |name: &str, action: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
             metadata: {{name: {name}}}\nspec: {{tier: Admin, priority: 5, subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}, \
             ingress: [{{action: {action}, from: [{{namespaces: {{}}}}]}}]}}\n---\n"
        )
    };
    let c = with(&format!(
        "{}{}",
        tie("b-deny", "Deny"),
        tie("a-accept", "Accept")
    ));
    let node = node_all_local(&c);
    let mut ids = Ids::default();
    let compiled = compile(&c, &node, &mut ids, &MapState::default());
    let conflicts: Vec<(String, String)> = compiled
        .conflicts
        .iter()
        .map(|c| (c.first.to_string(), c.second.to_string()))
        .collect();
    assert_eq!(
        conflicts,
        [(
            "ClusterNetworkPolicy/a-accept".to_string(),
            "ClusterNetworkPolicy/b-deny".to_string()
        )]
    );
    // Deterministic: the first by name decides.
    assert!(check(&c, "y/c", "x/a", TCP, 80));
}

#[test]
fn a_deny_with_a_peer_this_version_cannot_read_denies_everything() {
    let mut c = with(ADMIN_PASS_THEN_DENY);
    let p = c
        .cluster_policies
        .get_mut(&ObjectRef::new("ClusterNetworkPolicy", "pass-from-x"))
        .unwrap();
    p.ingress[0].peers = vec![crate::cluster_policy::ClusterPeer::Unknown];
    p.ingress[0].action = Action::Deny;
    assert!(!check(&c, "x/b", "x/a", TCP, 80));
    // An Accept through such a peer matches nothing: the Deny at 20 decides.
    let p = c
        .cluster_policies
        .get_mut(&ObjectRef::new("ClusterNetworkPolicy", "pass-from-x"))
        .unwrap();
    p.ingress[0].action = Action::Accept;
    assert!(!check(&c, "x/b", "x/a", TCP, 80));
}

#[test]
fn endpoints_selected_by_the_same_cluster_rules_share_one_tier_set() {
    // a and b are selected by the same ClusterNetworkPolicies but by different NetworkPolicies:
    // their own sets differ, their tier set is one, and its entries are in the map once.
    let c = with(&format!(
        "{ADMIN_PASS_THEN_DENY}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: only-b, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{pod: b}}}}, ingress: [{{ports: [{{port: 81}}]}}]}}\n"
    ));
    let (state, node) = build(&c);
    let a = state.endpoints[&node.interfaces[&ObjectRef::new("x", "a")]];
    let b = state.endpoints[&node.interfaces[&ObjectRef::new("x", "b")]];
    assert_ne!(a.policy_set, b.policy_set);
    assert_eq!(a.tier_set, b.tier_set);
    assert_ne!(a.tier_set, 0);
    let admin_entries = state
        .policy
        .keys()
        .filter(|k| k.data.tier == enforcer_common::tier::ADMIN)
        .count();
    assert_eq!(admin_entries, entries_in(&state, a.tier_set));
    // c (namespace y) is selected by neither: no tier set.
    let cc = state.endpoints[&node.interfaces[&ObjectRef::new("y", "c")]];
    assert_eq!((cc.tiers, cc.tier_set), (0, 0));
}

#[test]
fn an_isolated_endpoint_shares_the_admin_set_and_has_no_baseline_set() {
    // A Baseline rule and an Admin rule over namespace x; a NetworkPolicy isolates b's ingress.
    // a and b share the Admin set; only a (not isolated) has a Baseline set; the Admin entries
    // are in the map once.
    let c = with(&format!(
        "{ADMIN_PASS_THEN_DENY}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\n\
         kind: ClusterNetworkPolicy\nmetadata: {{name: baseline-deny}}\n\
         spec: {{tier: Baseline, priority: 1, subject: {{namespaces: {{matchLabels: {{ns: x}}}}}},\n\
         ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: only-b, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{pod: b}}}}, ingress: [{{ports: [{{port: 81}}]}}]}}\n"
    ));
    let (state, node) = build(&c);
    let a = state.endpoints[&node.interfaces[&ObjectRef::new("x", "a")]];
    let b = state.endpoints[&node.interfaces[&ObjectRef::new("x", "b")]];
    assert_eq!(a.tier_set, b.tier_set);
    assert_ne!(a.tier_set, 0);
    assert_ne!(a.baseline_set, 0);
    assert_eq!(
        b.baseline_set, 0,
        "b's ingress is decided by its NetworkPolicy"
    );
    let count = |t: u8| state.policy.keys().filter(|k| k.data.tier == t).count();
    assert_eq!(
        count(enforcer_common::tier::ADMIN),
        entries_in(&state, a.tier_set)
    );
    assert_eq!(
        count(enforcer_common::tier::BASELINE),
        entries_in(&state, a.baseline_set)
    );
    // The Baseline Deny still decides for a, and not for b.
    assert!(!check(&c, "x/b", "x/a", TCP, 80));
    assert!(check(&c, "x/a", "x/b", TCP, 81));
}

/// How many entries the map holds under `set`.
fn entries_in(state: &MapState, set: u32) -> usize {
    state
        .policy
        .keys()
        .filter(|k| k.data.policy_set == set)
        .count()
}
