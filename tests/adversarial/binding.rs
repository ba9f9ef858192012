//! Adversarial tests: the pod-to-interface binding against forged ARP/NDP and address theft.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
//!
//! Every test builds a throwaway node (network namespaces `enf-bind-<pid>-<tag>-*`: the node,
//! one per pod), runs the real agent (`enforcer run`) in the node namespace on a manifests
//! folder, attacks from a pod's namespace, and reads the result where a user would: the pinned
//! maps (`enforcer maps dump`), the agent's log and `/metrics`, and real datagrams between the
//! pods. Everything made (namespaces, pins, the agent, files) is removed on exit, pass or fail.
//! Needs root.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_enforcer");

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod of the test node.
struct Pod {
    name: &'static str,
    app: &'static str,
    v4: &'static str,
    v6: Option<&'static str>,
    mac: &'static str,
}

impl Pod {
    fn host_if(&self) -> String {
        format!("veth-{}", self.name)
    }
}

/// The node: its namespace, its pods' namespaces, the agent and its files.
struct Node {
    tag: String,
    bpffs: PathBuf,
    dir: PathBuf,
    pods: Vec<&'static str>,
    agent: Option<Child>,
}

impl Node {
    fn new(tag: &str) -> Node {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the binding tests need root (network namespaces, BPF)"
        );
        enforcer_lab::agent::ensure_bpffs().expect("a bpffs at /sys/fs/bpf");
        let tag = format!("enf-bind-{}-{tag}", std::process::id());
        let node = Node {
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{tag}")),
            dir: std::env::temp_dir().join(&tag),
            tag,
            pods: Vec::new(),
            agent: None,
        };
        // From here on, Drop cleans up even if a step fails.
        sh(&["ip", "netns", "add", &node.ns()]);
        node.n(&["link", "set", "lo", "up"]);
        std::fs::create_dir_all(node.dir.join("manifests")).unwrap();
        node
    }

    fn ns(&self) -> String {
        format!("{}-node", self.tag)
    }

    fn pod_ns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.tag)
    }

    /// `ip` in the node's namespace.
    fn n(&self, args: &[&str]) -> String {
        let ns = self.ns();
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip` in a pod's namespace.
    fn p(&self, pod: &str, args: &[&str]) -> String {
        let ns = self.pod_ns(pod);
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A pod's namespace and veth pair (host side in the node), its addresses on its end.
    fn add_pod(&mut self, pod: &Pod, prefix_v4: &str, prefix_v6: &str) {
        let ns = self.pod_ns(pod.name);
        sh(&["ip", "netns", "add", &ns]);
        self.pods.push(pod.name);
        let host = pod.host_if();
        self.n(&[
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.p(pod.name, &["link", "set", "lo", "up"]);
        self.p(pod.name, &["link", "set", "eth0", "address", pod.mac]);
        self.p(pod.name, &["link", "set", "eth0", "up"]);
        self.p(
            pod.name,
            &[
                "addr",
                "add",
                &format!("{}{prefix_v4}", pod.v4),
                "dev",
                "eth0",
            ],
        );
        if let Some(v6) = pod.v6 {
            self.p(
                pod.name,
                &[
                    "addr",
                    "add",
                    &format!("{v6}{prefix_v6}"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
        }
    }

    /// A bridge CNI node (flannel, K3s): `cni0` 10.42.0.1/24, fd42::1/64; every pod's veth a
    /// port of it.
    fn bridge(tag: &str, pods: &[&Pod]) -> Node {
        let mut node = Node::new(tag);
        node.n(&["link", "add", "cni0", "type", "bridge"]);
        node.n(&["link", "set", "cni0", "address", "02:00:00:00:00:01", "up"]);
        node.n(&["addr", "add", "10.42.0.1/24", "dev", "cni0"]);
        node.n(&["addr", "add", "fd42::1/64", "dev", "cni0", "nodad"]);
        for pod in pods {
            node.add_pod(pod, "/24", "/64");
            node.n(&["link", "set", &pod.host_if(), "master", "cni0", "up"]);
        }
        node
    }

    /// A routed CNI node (Calico, Cilium-style ptp): a host route per pod through its veth; the
    /// node's own address on a veth whose peer stays in the node.
    fn routed(tag: &str, pods: &[&Pod]) -> Node {
        let mut node = Node::new(tag);
        node.n(&[
            "link",
            "add",
            "node0",
            "type",
            "veth",
            "peer",
            "name",
            "node0-peer",
        ]);
        node.n(&["addr", "add", "192.0.2.1/32", "dev", "node0"]);
        node.n(&["link", "set", "node0", "up"]);
        for pod in pods {
            node.add_pod(pod, "/32", "/128");
            node.n(&["link", "set", &pod.host_if(), "up"]);
            node.n(&[
                "route",
                "add",
                &format!("{}/32", pod.v4),
                "dev",
                &pod.host_if(),
            ]);
        }
        node
    }

    fn write(&self, file: &str, text: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.dir.join("manifests").join(file)).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Starts `enforcer run` in the node's namespace (setns only: /sys/fs/bpf stays visible).
    fn start(&mut self, health_port: u16) {
        let child = Command::new("nsenter")
            .env("ENFORCER_RUN_DIR", self.dir.join("run"))
            .arg(format!("--net=/run/netns/{}", self.ns()))
            .arg(EXE)
            .arg("run")
            .arg("--manifests")
            .arg(self.dir.join("manifests"))
            .args(["--node", "node-1", "--rescan-ms", "200"])
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--status-file")
            .arg(self.dir.join("status.json"))
            .arg("--health-addr")
            .arg(format!("127.0.0.1:{health_port}"))
            .stdout(Stdio::null())
            .stderr(File::create(self.dir.join("agent.log")).unwrap())
            .spawn()
            .expect("starting the agent");
        self.agent = Some(child);
    }

    fn dump(&self) -> Value {
        self.try_dump().unwrap_or_else(|e| panic!("maps dump: {e}"))
    }

    fn try_dump(&self) -> Result<Value, String> {
        let out = Command::new(EXE)
            .env("ENFORCER_RUN_DIR", self.dir.join("run"))
            .args(["maps", "dump", "--output", "json", "--bpffs"])
            .arg(&self.bpffs)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    fn ifindex(&self, name: &str) -> u64 {
        let v: Value = serde_json::from_str(&self.n(&["-json", "link", "show", name])).unwrap();
        v[0]["ifindex"].as_u64().unwrap()
    }

    /// The `ENDPOINTS` entry of a host interface, as `maps dump` shows it.
    fn endpoint(&self, dump: &Value, host_if: &str) -> Option<Value> {
        let ifindex = self.ifindex(host_if);
        dump["endpoints"].get(ifindex.to_string()).cloned()
    }

    /// The endpoint id the agent gave the pod owning `ip` (from its address identity).
    fn endpoint_id_of(&self, dump: &Value, ip: &str) -> Option<u64> {
        dump["identities"][ip]["endpoint_id"].as_u64()
    }

    fn http_get(&self, port: u16, path: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns()))
            .args(["curl", "-s", "-m", "2"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .expect("running curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether a UDP datagram from pod `from` reaches pod `to` at `to_ip` (a few tries, so
    /// neighbour resolution on the way does not count as a drop).
    fn delivered(&self, from: &str, to: &str, to_ip: &str) -> bool {
        let port = 40000 + (std::process::id() % 20000) as u16;
        let to_ip: IpAddr = to_ip.parse().unwrap();
        let receiver = {
            let ns = self.pod_ns(to);
            in_netns(ns, move || {
                let any: IpAddr = if to_ip.is_ipv4() {
                    "0.0.0.0".parse().unwrap()
                } else {
                    "::".parse().unwrap()
                };
                let s = UdpSocket::bind(SocketAddr::new(any, port)).expect("bind");
                s.set_read_timeout(Some(Duration::from_millis(1500)))
                    .unwrap();
                s
            })
        };
        let sender = std::thread::spawn({
            let ns = self.pod_ns(from);
            move || {
                in_netns(ns, move || {
                    let any: IpAddr = if to_ip.is_ipv4() {
                        "0.0.0.0".parse().unwrap()
                    } else {
                        "::".parse().unwrap()
                    };
                    let s = UdpSocket::bind(SocketAddr::new(any, 0)).unwrap();
                    for _ in 0..5 {
                        let _ = s.send_to(b"probe", SocketAddr::new(to_ip, port));
                        std::thread::sleep(Duration::from_millis(150));
                    }
                })
            }
        });
        let mut buf = [0u8; 64];
        let got = receiver.recv_from(&mut buf).is_ok();
        sender.join().unwrap();
        got
    }

    /// The node's neighbour entry for `ip` on cni0: its link-layer address.
    fn neighbour_mac(&self, ip: &str) -> Option<String> {
        let v: Value =
            serde_json::from_str(&self.n(&["-json", "neigh", "show", "to", ip, "dev", "cni0"]))
                .ok()?;
        v.as_array()?
            .first()?
            .get("lladdr")?
            .as_str()
            .map(str::to_string)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        if std::thread::panicking() {
            eprintln!("agent log:\n{}", self.log());
        }
        for pod in &self.pods {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.pod_ns(pod)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns()])
            .status();
        let _ = enforcer::bpf::remove_pins(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread that joined network namespace `ns` first.
fn in_netns<R: Send + 'static>(ns: String, f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(move || {
        let path = format!("/run/netns/{ns}");
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on a valid namespace descriptor; it only affects this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// An ARP reply nobody asked for, to `dst_mac`: "`claimed_ip` is at `sender_mac`".
fn forged_arp(sender_mac: &str, claimed_ip: &str, dst_mac: &str, dst_ip: &str) -> Vec<u8> {
    let (src, dst) = (mac_bytes(sender_mac), mac_bytes(dst_mac));
    let ip4 = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // Ethernet/IPv4, reply
    f.extend_from_slice(&src);
    f.extend_from_slice(&ip4(claimed_ip));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&ip4(dst_ip));
    f
}

/// An unsolicited neighbour advertisement with the override flag, to `dst_mac`/`dst_ip`:
/// "`claimed_ip` is at `sender_mac`", sent from `src_ip`.
fn forged_na(
    sender_mac: &str,
    src_ip: &str,
    claimed_ip: &str,
    dst_mac: &str,
    dst_ip: &str,
) -> Vec<u8> {
    let (smac, dmac) = (mac_bytes(sender_mac), mac_bytes(dst_mac));
    let ip6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let (src, dst, target) = (ip6(src_ip), ip6(dst_ip), ip6(claimed_ip));
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0]; // NA, override
    icmp.extend_from_slice(&target);
    icmp.extend_from_slice(&[2, 1]); // target link-layer address option
    icmp.extend_from_slice(&smac);
    // Checksum over the IPv6 pseudo-header and the message.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src);
    add(&dst);
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&icmp);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 as neighbour discovery requires
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&icmp);
    f
}

/// Sends raw Ethernet frames out of `eth0` of namespace `ns` (what any pod with a raw socket
/// can do).
fn send_frames(ns: String, frames: Vec<Vec<u8>>) {
    in_netns(ns, move || {
        // SAFETY: plain socket(2), checked; closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new("eth0").unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        for f in &frames {
            // SAFETY: `f` and `sll` are valid for the lengths passed.
            let n = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(n as usize, f.len(), "{}", std::io::Error::last_os_error());
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    });
}

const VICTIM: Pod = Pod {
    name: "victim",
    app: "victim",
    v4: "10.42.0.10",
    v6: Some("fd42::10"),
    mac: "02:00:00:00:00:10",
};
const ATTACKER: Pod = Pod {
    name: "attacker",
    app: "attacker",
    v4: "10.42.0.11",
    v6: Some("fd42::11"),
    mac: "02:00:00:00:00:11",
};
const CLIENT: Pod = Pod {
    name: "client",
    app: "c",
    v4: "10.42.0.12",
    v6: Some("fd42::12"),
    mac: "02:00:00:00:00:12",
};

/// The pods, and policies: the victim admits only app=c (egress open); the attacker is
/// isolated both ways with no rule; the client has no policy.
fn manifests(pods: &[&Pod]) -> String {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
    for p in pods {
        let ips = match p.v6 {
            Some(v6) => format!("[{{ip: {}}}, {{ip: \"{v6}\"}}]", p.v4),
            None => format!("[{{ip: {}}}]", p.v4),
        };
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: x, labels: {{app: {}}}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c, image: i}}]}}\n\
             status: {{podIPs: {ips}}}\n",
            p.name, p.app
        ));
    }
    y.push_str(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: victim-from-c, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {app: victim}}\n  policyTypes: [Ingress]\n\
         \x20 ingress: [{from: [{podSelector: {matchLabels: {app: c}}}]}]\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: attacker-isolated, namespace: x}\n\
         spec: {podSelector: {matchLabels: {app: attacker}}, policyTypes: [Ingress, Egress]}\n",
    );
    y
}

/// Waits until the agent has every pod's endpoint on the pod's own interface; returns the
/// endpoint ids by pod name.
fn wait_enforced(node: &Node, pods: &[&Pod]) -> Vec<(&'static str, u64)> {
    let mut ids = Vec::new();
    wait_for(
        "every pod's endpoint on its own interface",
        Duration::from_secs(20),
        || {
            let Ok(d) = node.try_dump() else {
                return false;
            };
            ids.clear();
            for p in pods {
                let (Some(id), Some(ep)) = (
                    node.endpoint_id_of(&d, p.v4),
                    node.endpoint(&d, &p.host_if()),
                ) else {
                    return false;
                };
                if ep["endpoint_id"].as_u64() != Some(id) {
                    return false;
                }
                ids.push((p.name, id));
            }
            true
        },
    );
    ids
}

/// Checks for `for_how_long` that every pod's endpoint stays on its own interface (the agent
/// gets every chance to react to what just happened).
fn bindings_hold(node: &Node, ids: &[(&'static str, u64)], pods: &[&Pod], for_how_long: Duration) {
    let start = Instant::now();
    while start.elapsed() < for_how_long {
        let d = node.dump();
        for (p, (name, id)) in pods.iter().zip(ids) {
            let ep = node.endpoint(&d, &p.host_if());
            assert_eq!(
                ep.as_ref().and_then(|e| e["endpoint_id"].as_u64()),
                Some(*id),
                "{name}'s interface {} must keep {name}'s endpoint {id}; endpoints: {}",
                p.host_if(),
                d["endpoints"]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pod_poisoning_the_nodes_neighbour_entry_cannot_move_the_victims_binding() {
    let pods = [&VICTIM, &ATTACKER, &CLIENT];
    let mut node = Node::bridge("poison", &pods);
    node.write("cluster.yaml", &manifests(&pods));
    node.start(19971);
    let ids = wait_enforced(&node, &pods);
    assert!(
        node.delivered("client", "victim", VICTIM.v4),
        "c → victim: admitted"
    );
    assert!(
        !node.delivered("client", "attacker", ATTACKER.v4),
        "attacker: isolated"
    );

    // The node resolves the victim's addresses (as any traffic from the node would).
    for ip in [VICTIM.v4, VICTIM.v6.unwrap(), ATTACKER.v4] {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.ns()))
            .args(["bash", "-c", &format!("echo > /dev/udp/{ip}/9")])
            .status();
    }
    wait_for(
        "the node's neighbour entries",
        Duration::from_secs(5),
        || {
            node.neighbour_mac(VICTIM.v4).as_deref() == Some(VICTIM.mac)
                && node.neighbour_mac(VICTIM.v6.unwrap()).as_deref() == Some(VICTIM.mac)
        },
    );
    // Past the neighbour table's lock time (1 s), then the attacker claims the victim's
    // addresses: unsolicited ARP replies and neighbour advertisements to the node.
    std::thread::sleep(Duration::from_millis(1100));
    let node_mac = "02:00:00:00:00:01";
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(forged_arp(ATTACKER.mac, VICTIM.v4, node_mac, "10.42.0.1"));
        frames.push(forged_na(
            ATTACKER.mac,
            ATTACKER.v6.unwrap(),
            VICTIM.v6.unwrap(),
            node_mac,
            "fd42::1",
        ));
    }
    send_frames(node.pod_ns("attacker"), frames);
    // Anti-spoofing stops the forged frames at the attacker's interface (`spoofed-source`): the
    // node's entries stay the victim's.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (
            node.neighbour_mac(VICTIM.v4),
            node.neighbour_mac(VICTIM.v6.unwrap())
        ),
        (Some(VICTIM.mac.to_string()), Some(VICTIM.mac.to_string())),
        "the forged ARP reply and neighbour advertisement reached the node"
    );
    // The binding must not follow neighbour state however it got poisoned: poison it as the
    // forged frames would have.
    for ip in [VICTIM.v4, VICTIM.v6.unwrap()] {
        node.n(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            ATTACKER.mac,
            "dev",
            "cni0",
        ]);
    }
    wait_for(
        "the node's neighbour entries poisoned",
        Duration::from_secs(5),
        || {
            node.neighbour_mac(VICTIM.v4).as_deref() == Some(ATTACKER.mac)
                && node.neighbour_mac(VICTIM.v6.unwrap()).as_deref() == Some(ATTACKER.mac)
        },
    );

    // The bridge learnt the attacker's MAC on the attacker's port, the node's neighbour table
    // says the victim is there: neither moves anything.
    bindings_hold(&node, &ids, &pods, Duration::from_secs(2));
    let d = node.dump();
    let atk = node.endpoint(&d, &ATTACKER.host_if()).unwrap();
    assert_eq!(
        (atk["ingress"].as_str(), atk["egress"].as_str()),
        (Some("enforce"), Some("enforce")),
        "the attacker's interface keeps the attacker's policy: {atk}"
    );
    // And the attacker gains nothing the victim's policy admits: not c's traffic, not the
    // victim's open egress.
    assert!(
        !node.delivered("client", "attacker", ATTACKER.v4),
        "c → attacker"
    );
    assert!(
        !node.delivered("attacker", "client", CLIENT.v4),
        "attacker → c"
    );
    assert!(
        node.delivered("client", "victim", VICTIM.v4),
        "c → victim still admitted"
    );
    assert!(!node.log().contains("endpoint conflict"), "{}", node.log());
}

#[test]
fn a_pod_adding_another_pods_address_to_its_own_interface_holds_both_until_it_is_removed() {
    let pods = [&VICTIM, &ATTACKER, &CLIENT];
    let mut node = Node::bridge("steal", &pods);
    node.write("cluster.yaml", &manifests(&pods));
    let port = 19972;
    node.start(port);
    let ids = wait_enforced(&node, &pods);
    assert!(
        node.delivered("client", "victim", VICTIM.v4),
        "c → victim: admitted"
    );

    // The attacker (with NET_ADMIN in its own namespace) configures the victim's address.
    node.p(
        "attacker",
        &["addr", "add", &format!("{}/32", VICTIM.v4), "dev", "eth0"],
    );
    let held = |d: &Value, p: &Pod| {
        node.endpoint(d, &p.host_if()).is_some_and(|e| {
            e["ingress"] == "deny-all"
                && e["egress"] == "deny-all"
                && e["policy_set"].as_u64()
                    == Some(u64::from(enforcer_common::reason::ENDPOINT_CONFLICT))
        })
    };
    wait_for(
        "both interfaces held for the conflict",
        Duration::from_secs(5),
        || {
            let d = node.dump();
            held(&d, &VICTIM) && held(&d, &ATTACKER)
        },
    );
    // The client is untouched.
    let d = node.dump();
    let c = node.endpoint(&d, &CLIENT.host_if()).unwrap();
    assert_eq!(c["endpoint_id"].as_u64(), Some(ids[2].1), "{c}");

    // Reported: a log line naming both pods, a metric, and the drops' reason.
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("endpoint conflict"))
        .unwrap_or_else(|| panic!("no conflict in the log:\n{log}"));
    assert!(
        line.contains("x/victim") && line.contains("x/attacker"),
        "{line}"
    );
    let metrics = node.http_get(port, "/metrics");
    assert!(
        metrics.contains("enforcer_endpoint_conflict_interfaces 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("enforcer_endpoint_conflicts_total 1"),
        "{metrics}"
    );
    assert!(
        !node.delivered("client", "victim", VICTIM.v4),
        "c → victim: held"
    );
    let d = node.dump();
    let conflicts = d["verdicts"]["endpoint-conflict"].as_u64().unwrap_or(0);
    assert!(
        conflicts > 0,
        "drops counted as endpoint-conflict: {}",
        d["verdicts"]
    );

    // Removed: both are enforced normally again, under their own endpoints.
    node.p(
        "attacker",
        &["addr", "del", &format!("{}/32", VICTIM.v4), "dev", "eth0"],
    );
    let _ = wait_enforced(&node, &pods);
    bindings_hold(&node, &ids, &pods, Duration::from_millis(300));
    assert!(
        node.log().contains("endpoint conflict resolved"),
        "{}",
        node.log()
    );
    assert!(
        node.http_get(port, "/metrics")
            .contains("enforcer_endpoint_conflict_interfaces 0")
    );
    assert!(
        node.delivered("client", "victim", VICTIM.v4),
        "c → victim: admitted again"
    );
    assert!(
        !node.delivered("client", "attacker", ATTACKER.v4),
        "attacker: isolated again"
    );

    // Nor can the attacker unbind itself (and so leave its interface unmanaged) by removing
    // its own addresses: a binding stays while nothing else claims the interface.
    node.p(
        "attacker",
        &["addr", "flush", "dev", "eth0", "scope", "global"],
    );
    bindings_hold(&node, &ids, &pods, Duration::from_secs(1));
}

#[test]
fn a_stale_host_route_through_another_pods_interface_cannot_move_its_binding() {
    let victim = Pod {
        v4: "10.43.0.10",
        v6: None,
        ..VICTIM
    };
    let attacker = Pod {
        v4: "10.43.0.11",
        v6: None,
        ..ATTACKER
    };
    let pods = [&victim, &attacker];
    let mut node = Node::routed("route", &pods);
    node.write("cluster.yaml", &manifests(&pods));
    node.start(19973);
    let ids = wait_enforced(&node, &pods);

    // The victim's host route now leads through the attacker's veth (left behind by a CNI
    // that reused an address, or written by anyone but the victim): a hint, not a binding.
    node.n(&[
        "route",
        "replace",
        &format!("{}/32", victim.v4),
        "dev",
        &attacker.host_if(),
    ]);
    bindings_hold(&node, &ids, &pods, Duration::from_secs(2));
}
