//! Adversarial tests: fail-closed behaviour: held interfaces, full maps, restarts.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.

#[path = "../../enforcer/tests/common/packets.rs"]
mod packets;

use std::path::PathBuf;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use enforcer_common::{Config, EndpointSlot, EndpointValue, mode, reason, verdict};
use packets::*;

const IN: Prog = Prog::ToEndpoint;

/// A bpffs instance of our own, mounted on a throwaway folder (the machine's /sys/fs/bpf may
/// not be mounted, and nothing here should depend on it); unmounted and removed on drop.
struct Bpffs {
    mount: PathBuf,
}

impl Bpffs {
    fn new(tag: &str) -> Bpffs {
        require_root();
        let mount =
            std::env::temp_dir().join(format!("enf-failclosed-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&mount).expect("creating the mount point");
        let b = Bpffs { mount };
        let ok = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&b.mount)
            .status()
            .expect("running mount");
        assert!(ok.success(), "mounting bpffs on {}", b.mount.display());
        b
    }
    fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// A pinned datapath under a throwaway bpffs, removed on drop (also on failure).
struct Pinned {
    dp: Option<Datapath>,
    bpffs: PathBuf,
    _fs: Bpffs,
}

impl Pinned {
    fn new(tag: &str) -> Pinned {
        let fs = Bpffs::new(tag);
        let bpffs = fs.path("enforcer");
        let dp = Datapath::load(&bpffs).expect("loading the datapath pinned");
        Pinned {
            dp: Some(dp),
            bpffs,
            _fs: fs,
        }
    }
    fn dp(&mut self) -> &mut Datapath {
        self.dp.as_mut().expect("datapath")
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            let _ = dp.cleanup(false);
        }
        let _ = enforcer::bpf::remove_pins(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

/// The agent flips from one generation to the next by writing `CONFIG` whole; the kernel copies
/// the value in without atomicity, so a packet racing the flip could read the new revision next
/// to the old generation, judge its flow by the old policy and stamp it with the new revision
/// (never re-checked again). The revision alone must name the generation: a packet that reads
/// the new revision is judged by the new generation, whatever else the value holds.
#[test]
fn a_torn_config_read_is_impossible() {
    let mut p = Pinned::new("torn");
    // The endpoint as the agent prepares a flip: generation 0 holds the old state (held
    // closed), generation 1 the new one (open).
    let slot = |m| EndpointSlot {
        policy_set: 0,
        ingress_mode: m,
        egress_mode: m,
    };
    let data = MapData::from_pin(p.bpffs.join("ENDPOINTS")).expect("the pinned ENDPOINTS");
    let mut endpoints: BpfHashMap<MapData, u32, EndpointValue> =
        BpfHashMap::try_from(Map::HashMap(data)).expect("a hash map");
    endpoints
        .insert(
            IFINDEX,
            EndpointValue {
                endpoint_id: EP_ID,
                slots: [slot(mode::DENY_ALL), slot(mode::ALLOW_ALL)],
            },
            0,
        )
        .expect("writing the endpoint");

    // Revision 2: generation 0, the old state.
    let old = Config {
        revision: 2,
        ..p.dp().config().unwrap()
    };
    p.dp().set_config(old).unwrap();
    let pkt = |sport| ipv4(PEER_A, POD, TCP, &tcp(sport, 80));
    assert_eq!(
        p.dp().test_run(IN, &pkt(40000), 1).unwrap().verdict,
        TC_DROP,
        "revision 2 is generation 0 (held)"
    );
    let ev = p.dp().drain_events();
    assert!(
        ev.iter()
            .any(|e| e.verdict == verdict::DROP && e.reason == reason::ENDPOINT_DENY_ALL),
        "{ev:?}"
    );

    // What a torn read sees: the next revision, with every other field of the old value.
    let torn = Config {
        revision: 3,
        ..p.dp().config().unwrap()
    };
    p.dp().set_config(torn).unwrap();
    assert_eq!(
        p.dp().test_run(IN, &pkt(40001), 1).unwrap().verdict,
        TC_PASS,
        "revision 3 is judged by generation 1, never by the old generation"
    );
    assert_eq!(p.dp().config().unwrap().revision, 3);
    // The admitted flow carries revision 3 and was judged by generation 1: the pair agrees.
    let ct = p.dp().conntrack().unwrap();
    assert!(
        ct.iter()
            .any(|(k, v)| u16::from_be(k.sport_be) == 40001 && v.revision == 3),
        "{ct:?}"
    );

    // And back: revision 4 is generation 0 again.
    let next = Config {
        revision: 4,
        ..p.dp().config().unwrap()
    };
    p.dp().set_config(next).unwrap();
    assert_eq!(
        p.dp().test_run(IN, &pkt(40002), 1).unwrap().verdict,
        TC_DROP
    );
}

// --- A full POLICY map ----------------------------------------------------------------------

fn cluster(yaml: &str) -> enforcer::compiler::Cluster {
    let mut c = enforcer::compiler::Cluster::default();
    for obj in enforcer::source::parse_objects("test.yaml", yaml).expect("test yaml parses") {
        c.insert(obj);
    }
    c
}

fn manifests(small_port: u16) -> String {
    let pod = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
        )
    };
    let policy = |name: &str, ports: &[u16]| {
        let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
             spec: {{podSelector: {{matchLabels: {{app: {name}}}}}, policyTypes: [Ingress, Egress], \
             ingress: [{{from: [{{podSelector: {{}}}}], ports: [{}]}}], egress: [{{ports: [{{port: 53, protocol: UDP}}]}}]}}\n---\n",
            ports.join(", ")
        )
    };
    let many: Vec<u16> = (1000..1040).collect();
    format!(
        "{}{}{}{}{}",
        pod("big", POD),
        pod("small", PEER_B),
        pod("peer", PEER_A),
        policy("big", &many),
        policy("small", &[small_port]),
    )
}

/// A pod whose policy needs more `POLICY` entries than the map has room for (a huge rule set,
/// or a map filled by others) must not make the whole install fail: before, one `ENOSPC` rolled
/// everything back, so no pod on the node got any change any more (and a new pod stayed
/// unenforced). Now that pod alone is held closed, reported as `endpoint-capacity`, and every
/// other endpoint keeps getting its changes. The kernel map here holds 16 entries.
#[test]
fn a_pod_whose_policy_does_not_fit_is_held_and_the_rest_keep_installing() {
    use enforcer::compiler::{Ids, NodeInput, compile, plan_with};
    require_root();
    const ROOM: u32 = 16;
    let mut dp = Datapath::load_unpinned_with(&[(enforcer_common::names::MAP_POLICY, ROOM)])
        .expect("loading the datapath");
    let mut ids = Ids::default();
    let node = |c: &enforcer::compiler::Cluster| NodeInput {
        node: "node-1".into(),
        // big on ifindex 1, where BPF_PROG_TEST_RUN hands packets in.
        interfaces: [("big", IFINDEX), ("small", 2), ("peer", 3)]
            .into_iter()
            .map(|(n, i)| (enforcer::model::ObjectRef::new("x", n), i))
            .filter(|(k, _)| c.pods.contains_key(k))
            .collect(),
        host_ips: vec![addr("192.0.2.1")],
        allow_host_ingress: true,
        held: Default::default(),
    };
    let mut installed = dp.read_state().unwrap();
    let mut revision = 1;
    for (step, small_port) in [80u16, 81].into_iter().enumerate() {
        let c = cluster(&manifests(small_port));
        let compiled = compile(&c, &node(&c), &mut ids, &installed);
        let planned = plan_with(&installed, &compiled, &mut ids, ROOM as usize);
        let big = enforcer::model::ObjectRef::new("x", "big");
        assert_eq!(
            planned.held.iter().map(|h| &h.pod).collect::<Vec<_>>(),
            [&big],
            "step {step}: only big is held"
        );
        let done = dp
            .install(&planned.state, revision + 1, 0)
            .unwrap_or_else(|e| panic!("step {step}: the install must go through: {e}"));
        revision = done.revision;
        installed = dp.read_state().unwrap();
        assert_eq!(
            installed, planned.state,
            "step {step}: the maps hold the plan"
        );

        // small has its current policy.
        let small = installed.endpoints[&2];
        assert_eq!(small.ingress_mode, mode::ENFORCE);
        let ports: Vec<u16> = installed
            .policy
            .keys()
            .filter(|k| k.data.policy_set == small.policy_set && k.data.proto == TCP)
            .map(|k| u16::from_be(k.data.port_be))
            .collect();
        assert!(
            ports.contains(&small_port) && ports.iter().all(|p| *p == small_port),
            "step {step}: small's rules are {ports:?}"
        );

        // big passes nothing but ARP, both ways, reported as endpoint-capacity and named.
        let big_id = installed.endpoints[&IFINDEX].endpoint_id;
        assert_ne!(big_id, 0);
        assert_eq!(
            dp.test_run(
                IN,
                &ipv4(PEER_A, POD, TCP, &tcp(40000 + step as u16, 1000)),
                1
            )
            .unwrap()
            .verdict,
            TC_DROP,
            "step {step}: a rule it has would allow this, but it is held"
        );
        assert_eq!(
            dp.test_run(Prog::FromEndpoint, &ipv4(POD, DNS, UDP, &udp(5353, 53)), 1)
                .unwrap()
                .verdict,
            TC_DROP
        );
        assert_eq!(
            dp.test_run(Prog::FromEndpoint, &arp(), 1).unwrap().verdict,
            TC_PASS
        );
        let ev = dp.drain_events();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            ev.iter().all(|e| e.verdict == verdict::DROP
                && e.reason == reason::ENDPOINT_CAPACITY
                && e.endpoint_id == big_id),
            "{ev:?}"
        );
        assert_eq!(reason::name(reason::ENDPOINT_CAPACITY), "endpoint-capacity");
    }
}
