//! The dump's sections, named or numeric, as tables and JSON.

use super::*;
use enforcer_common::{EndpointInfo, NameKey, name_kind};

#[test]
fn one_section_or_all_with_names_or_numbers() {
    let mut st = MapState::default();
    st.endpoints.insert(
        7,
        EndpointInfo {
            endpoint_id: 1,
            policy_set: 2,
            ingress_mode: mode::ENFORCE,
            egress_mode: mode::ALLOW_ALL,
            tiers: 0,
            tier_set: 0,
            baseline_set: 0,
        },
    );
    let mut verdicts = vec![0u64; enforcer_common::counter::LEN as usize];
    verdicts[reason::NO_RULE as usize] = 3;
    let counters = Counters {
        verdicts,
        rules: [(
            enforcer_common::RuleCounterKey {
                policy_id: 9,
                rule_index: 1,
                direction: direction::INGRESS,
                _pad: 0,
            },
            enforcer_common::RuleCounter {
                packets: 12,
                bytes: 3400,
            },
        )]
        .into(),
    };
    let names = Names::from([
        (
            NameKey {
                kind: name_kind::IDENTITY,
                id: 256,
            },
            "x {pod=a}".to_string(),
        ),
        (
            NameKey {
                kind: name_kind::POLICY,
                id: 9,
            },
            "x/allow-web".to_string(),
        ),
    ]);
    st.ip_identity.insert(
        crate::compiler::ip_key("10.0.0.1".parse().unwrap()),
        enforcer_common::IdentityValue {
            identity: 256,
            endpoint_id: 1,
        },
    );
    st.policy.insert(
        crate::state::Lpm {
            prefix_len: policy_prefix::FULL,
            data: enforcer_common::PolicyKey::new(
                2,
                256,
                direction::INGRESS,
                enforcer_common::tier::NETWORK_POLICY,
                6,
                80u16.to_be(),
            ),
        },
        enforcer_common::PolicyValue {
            policy_id: 9,
            rule_index: 1,
            ..Default::default()
        },
    );
    let ct = CtSummary {
        lru_entries: 3,
        established_entries: 2,
        ..Default::default()
    };
    let mut rec: AgentRecord =
        serde_json::from_value(serde_json::json!({"pid": 1, "started": "", "version": "",
            "commit": "", "node": "", "bpffs": "/x", "source": "manifests",
            "source_location": null, "synced": true, "generation": null, "error": null}))
        .unwrap();
    rec.pods.insert(7, "x/a".into());
    rec.pod_ips.insert("10.0.0.1".into(), "x/a".into());
    let input = Input {
        state: &st,
        conntrack: &ct,
        entries: &[],
        counters: &counters,
        names: &names,
        record: Some(&rec),
        now_ns: 0,
    };
    let all = render(&input, Format::Table, &Options::default());
    for want in [
        "ENDPOINTS",
        "enforce    allow-all  x/a",
        "10.0.0.1                                 1        x/a                              x {pod=a}",
        "CIDR PARTITION",
        "x/allow-web (1)",
        "CONNTRACK ENTRIES 5",
        "established (no eviction) 2",
        "FLOWS",
        "no-rule-allows       3",
        "ingress  1     12           3400         x/allow-web",
    ] {
        assert!(all.contains(want), "{want} in:\n{all}");
    }
    let policy_line = all.lines().find(|l| l.contains("x/allow-web (1)")).unwrap();
    assert!(
        policy_line.ends_with("x {pod=a}"),
        "the peer by name: {policy_line}"
    );
    let numeric = render(
        &input,
        Format::Table,
        &Options {
            numeric: true,
            ..Default::default()
        },
    );
    let policy_line = numeric.lines().find(|l| l.contains("#9 (1)")).unwrap();
    assert!(
        policy_line.ends_with(" 256"),
        "numbers with --numeric: {policy_line}"
    );
    let ep = render(
        &input,
        Format::Table,
        &Options {
            only: Some(Section::Endpoints),
            ..Default::default()
        },
    );
    assert!(
        ep.contains("enforce") && !ep.contains("POLICY ENTRIES"),
        "{ep}"
    );
    let json = render(&input, Format::Json, &Options::default());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdicts"]["no-rule-allows"], 3);
    assert_eq!(v["rules"][0]["packets"], 12);
    assert_eq!(v["rules"][0]["policy"], "x/allow-web");
    assert_eq!(v["endpoints"]["7"]["pod"], "x/a");
    assert_eq!(v["identities"]["10.0.0.1"]["identity"], "x {pod=a}");
    assert_eq!(v["policy"][0]["peer"], "x {pod=a}");
    assert_eq!(v["conntrack"]["established_entries"], 2);
    assert!(v["conntrack"]["flows"].as_array().unwrap().is_empty());
    let other = render(
        &input,
        Format::Json,
        &Options {
            pod: Some("y/b".into()),
            only: Some(Section::Endpoints),
            ..Default::default()
        },
    );
    let v: serde_json::Value = serde_json::from_str(&other).unwrap();
    assert_eq!(v["endpoints"], serde_json::json!({}));
}
