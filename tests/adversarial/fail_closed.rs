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
        tiers: 0,
        tier_set: 0,
        baseline_set: 0,
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
        conflicted: Default::default(),
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

// --- A restarted agent ------------------------------------------------------------------------

const EXE: &str = env!("CARGO_BIN_EXE_enforcer");

fn sh(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bridge node (flannel, K3s) in a namespace of its own, one quiet pod behind it, and agents
/// run in it with pins on a private bpffs; everything is removed on drop.
struct BridgeNode {
    id: String,
    node_ns: String,
    /// Pod name → its namespace.
    pods: Vec<(String, String)>,
    dir: PathBuf,
    bpffs: PathBuf,
    agent: Option<std::process::Child>,
    _fs: Bpffs,
}

impl BridgeNode {
    fn new(tag: &str) -> BridgeNode {
        let fs = Bpffs::new(tag);
        let id = format!("enf-fc-{}-{tag}", std::process::id());
        let b = BridgeNode {
            node_ns: format!("{id}-node"),
            pods: Vec::new(),
            dir: std::env::temp_dir().join(&id),
            bpffs: fs.path("enforcer"),
            agent: None,
            _fs: fs,
            id,
        };
        std::fs::create_dir_all(b.dir.join("manifests")).unwrap();
        sh(&["ip", "netns", "add", &b.node_ns]);
        b.node(&["link", "set", "lo", "up"]);
        b.node(&["link", "add", "cni0", "type", "bridge"]);
        b.node(&["addr", "add", "10.78.0.1/24", "dev", "cni0"]);
        b.node(&["link", "set", "cni0", "up"]);
        b
    }
    /// A pod behind the bridge: its own namespace, `eth0` with `ip`, host side `veth<name>`.
    fn add_pod(&mut self, name: &str, ip: &str) {
        let ns = format!("{}-{name}", self.id);
        sh(&["ip", "netns", "add", &ns]);
        self.pods.push((name.to_string(), ns.clone()));
        let host = format!("veth{name}");
        self.node(&["link", "add", &host, "type", "veth", "peer", "name", "eth0"]);
        self.node(&["link", "set", "eth0", "netns", &ns]);
        self.node(&["link", "set", &host, "master", "cni0"]);
        self.node(&["link", "set", &host, "up"]);
        self.pod(name, &["link", "set", "lo", "up"]);
        self.pod(name, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        self.pod(name, &["link", "set", "eth0", "up"]);
    }
    fn node(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", self.node_ns.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }
    fn pod(&self, name: &str, args: &[&str]) -> String {
        let ns = &self.pods.iter().find(|(n, _)| n == name).expect("a pod").1;
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }
    fn write(&self, file: &str, text: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.dir.join("manifests").join(file)).unwrap();
    }
    fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
    fn start(&mut self, log: &str) {
        self.start_with(log, &[]);
    }
    fn start_with(&mut self, log: &str, extra: &[&str]) {
        let _ = std::fs::remove_file(self.dir.join("status.json"));
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg(EXE)
            .arg("run")
            .arg("--manifests")
            .arg(self.dir.join("manifests"))
            .args(["--node", "node-1", "--rescan-ms", "100", "--keep-pins"])
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--status-file")
            .arg(self.dir.join("status.json"))
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(log)).unwrap())
            .spawn()
            .expect("starting the agent");
        self.agent = Some(child);
    }
    fn wait(&mut self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
        let start = std::time::Instant::now();
        loop {
            if self.status().is_some_and(|s| ok(&s)) {
                return;
            }
            if let Some(Ok(Some(code))) = self.agent.as_mut().map(|a| a.try_wait()) {
                panic!("the agent exited ({code}) waiting for {what}");
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "timed out waiting for {what}: {:?}",
                self.status()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    /// SIGTERM; the agent leaves its pins (--keep-pins).
    fn stop(&mut self) {
        let mut a = self.agent.take().expect("an agent runs");
        unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
        let status = a.wait().unwrap();
        assert!(status.success(), "the agent exited with {status}");
    }
    fn pins(&self) -> enforcer::bpf::PinnedMaps {
        enforcer::bpf::PinnedMaps::open(&self.bpffs).expect("the pins")
    }
}

impl Drop for BridgeNode {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        // The agents kept their pins: take the links and maps away before the bpffs goes.
        let _ = enforcer::bpf::remove_pins(&self.bpffs);
        let pods = self.pods.iter().map(|(_, ns)| ns);
        for ns in std::iter::once(&self.node_ns).chain(pods) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const NS_X: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n";
const POD_Q: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: x, labels: {app: q}}\n\
    spec: {nodeName: node-1, containers: [{name: c}]}\nstatus: {podIP: 10.78.0.2}\n";
const POD_A: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n\
    spec: {nodeName: node-2, containers: [{name: c}]}\nstatus: {podIP: 10.79.0.1}\n";

fn deny_ingress(name: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{app: q}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a}}}}}}], ports: [{{port: 80}}]}}]}}\n"
    )
}

/// What must survive a restart: the pod's binding (ifindex → endpoint id), the identities of
/// addresses, and what each policy id names (rule counters, conntrack and events use them).
/// ifindex → (endpoint id, modes); address → identity; policy id → name.
type PinnedIds = (
    std::collections::BTreeMap<u32, (u32, u32, u32)>,
    std::collections::BTreeMap<enforcer_common::IpAddrKey, u32>,
    std::collections::BTreeMap<u32, String>,
);

fn ids_of(p: &enforcer::bpf::PinnedMaps) -> PinnedIds {
    let st = p.read_state().unwrap();
    let endpoints = st
        .endpoints
        .iter()
        .map(|(i, e)| (*i, (e.endpoint_id, e.ingress_mode, e.egress_mode)))
        .collect();
    let identities = st
        .ip_identity
        .iter()
        .map(|(k, v)| (*k, v.identity))
        .collect();
    let policies = p
        .names()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.kind == enforcer_common::name_kind::POLICY)
        .map(|(k, v)| (k.id, v))
        .collect();
    (endpoints, identities, policies)
}

/// A restarted agent used to start from empty id tables and empty bindings: it numbered
/// policies and identities again in name order (so ids in conntrack entries and rule counters
/// changed meaning), and a quiet pod on a bridge CNI (no fresh neighbour or forwarding entry:
/// it sent nothing since the restart) could not be found, so its endpoint was deleted and the
/// pod left unenforced. The agent now seeds ids and bindings from its pins.
#[test]
fn a_restarted_agent_does_not_renumber_or_unbind_quiet_pods() {
    require_root();
    let mut n = BridgeNode::new("restart");
    n.add_pod("q", "10.78.0.2");
    // History: policy zz (and pod q's label set) first, then a and policy aa: the first agent
    // numbers zz before aa, q before a. A fresh agent would number them in name order.
    n.write("a-ns.yaml", NS_X);
    n.write("q.yaml", POD_Q);
    n.write("zz.yaml", &deny_ingress("zz"));
    n.start("agent1.log");
    n.wait("q bound", |s| s["endpoints"] == 1);
    n.write("a.yaml", POD_A);
    n.write("aa.yaml", &deny_ingress("aa"));
    let start = std::time::Instant::now();
    while !ids_of(&n.pins()).2.values().any(|v| v == "x/aa") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "aa never installed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    n.stop();
    let before = ids_of(&n.pins());
    assert_eq!(before.0.len(), 1, "q bound: {:?}", before.0);
    assert!(before.0.values().all(|(_, ing, _)| *ing == mode::ENFORCE));
    let policy_ids = |p: &std::collections::BTreeMap<u32, String>| {
        (
            p.iter().find(|(_, v)| *v == "x/zz").map(|(k, _)| *k),
            p.iter().find(|(_, v)| *v == "x/aa").map(|(k, _)| *k),
        )
    };
    let (zz, aa) = policy_ids(&before.2);
    assert!(zz < aa, "the first agent numbered zz first: {:?}", before.2);

    // q goes quiet: it answers no ARP, and the node forgets its neighbour and fdb entries.
    n.pod("q", &["link", "set", "eth0", "arp", "off"]);
    n.node(&["neigh", "flush", "dev", "cni0"]);
    let fdb = sh(&["bridge", "-n", &n.node_ns, "fdb", "show", "br", "cni0"]);
    for line in fdb
        .lines()
        .filter(|l| l.contains("dev vethq") && !l.contains("permanent"))
    {
        let mac = line.split_whitespace().next().unwrap();
        sh(&[
            "bridge", "-n", &n.node_ns, "fdb", "del", mac, "dev", "vethq", "master",
        ]);
    }

    n.start("agent2.log");
    n.wait("the second agent synced", |s| {
        s["endpoints"].as_u64().is_some()
    });
    // Give rescans time to (wrongly) unbind q.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    n.stop();
    let after = ids_of(&n.pins());
    assert_eq!(
        after.0, before.0,
        "q stays bound and enforced, under the same endpoint id"
    );
    assert_eq!(after.1, before.1, "no identity renumbered");
    assert_eq!(after.2, before.2, "every policy id names the same policy");
}

/// The agent's side of a full map: on a node whose pinned `POLICY` map holds 24 entries (a map
/// pinned by an earlier agent keeps its size), a pod whose policy needs 81 is held closed and
/// named where an operator looks (status file, `/metrics`, the log, and the drop events), while
/// the other pod's policy changes keep being installed.
#[test]
fn a_pod_held_for_room_is_named_in_the_status_file_metrics_log_and_events() {
    require_root();
    let mut n = BridgeNode::new("room");
    n.add_pod("big", "10.78.0.2");
    n.add_pod("small", "10.78.0.3");
    std::fs::create_dir_all(&n.bpffs).unwrap();
    let policy_pin = n.bpffs.join("POLICY");
    sh(&[
        "bpftool",
        "map",
        "create",
        policy_pin.to_str().unwrap(),
        "type",
        "lpm_trie",
        "key",
        // The LPM key: the prefix length, then the PolicyKey.
        &(4 + std::mem::size_of::<enforcer_common::PolicyKey>()).to_string(),
        "value",
        &std::mem::size_of::<enforcer_common::PolicyValue>().to_string(),
        "entries",
        "24",
        "name",
        "POLICY",
        "flags",
        "1",
    ]);
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
             spec: {{podSelector: {{matchLabels: {{app: {name}}}}}, ingress: [{{from: [{{podSelector: {{}}}}], ports: [{}]}}]}}\n",
            ports.join(", ")
        )
    };
    let many: Vec<u16> = (1000..1040).collect();
    n.write(
        "pods.yaml",
        &format!(
            "{NS_X}{}{}",
            pod("big", "10.78.0.2"),
            pod("small", "10.78.0.3")
        ),
    );
    n.write("big.yaml", &policy("big", &many));
    n.write("small.yaml", &policy("small", &[80]));
    let events = n.dir.join("events.jsonl");
    n.start_with(
        "agent.log",
        &[
            "--health-addr",
            "127.0.0.1:19971",
            "--events-file",
            events.to_str().unwrap(),
        ],
    );
    n.wait("big held, small installed", |s| {
        s["endpoints"] == 2
            && s["held"]
                == serde_json::json!([{"pod": "x/big", "reason": "endpoint-capacity", "entries": 81}])
    });
    let metrics = sh(&[
        "nsenter",
        &format!("--net=/run/netns/{}", n.node_ns),
        "curl",
        "-s",
        "-m",
        "2",
        "http://127.0.0.1:19971/metrics",
    ]);
    assert!(
        metrics.contains("enforcer_endpoints_held{reason=\"endpoint-capacity\"} 1"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(n.dir.join("agent.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("x/big") && l.contains("does not fit")),
        "the log names the pod:\n{log}"
    );

    // small's change installs; big stays held.
    let port_of_small = |n: &BridgeNode| {
        let st = n.pins().read_state().unwrap();
        let small = st
            .endpoints
            .values()
            .find(|e| e.ingress_mode == mode::ENFORCE)
            .copied();
        small.map(|e| {
            st.policy
                .keys()
                .filter(|k| k.data.policy_set == e.policy_set && k.data.proto == TCP)
                .map(|k| u16::from_be(k.data.port_be))
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(port_of_small(&n), Some(vec![80, 80]));
    n.write("small.yaml", &policy("small", &[81]));
    let start = std::time::Instant::now();
    while port_of_small(&n) != Some(vec![81, 81]) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "small's change never installed: {:?}",
            port_of_small(&n)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let st = n.pins().read_state().unwrap();
    assert!(
        st.endpoints
            .values()
            .any(|e| e.ingress_mode == mode::DENY_ALL
                && e.held_reason() == reason::ENDPOINT_CAPACITY),
        "{:?}",
        st.endpoints
    );

    // Traffic into big is dropped and reported against big.
    let start = std::time::Instant::now();
    loop {
        sh(&[
            "nsenter",
            &format!("--net=/run/netns/{}", n.node_ns),
            "bash",
            "-c",
            "echo x > /dev/udp/10.78.0.2/9",
        ]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("\"endpoint-capacity\"") && l.contains("\"endpoint\":\"x/big\""))
        {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no endpoint-capacity event naming x/big:\n{text}"
        );
    }
    n.stop();
}
