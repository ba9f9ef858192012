//! The one definition of every type shared by the eBPF datapath and the agent.
//!
//! Rules for everything in this file:
//! - `#[repr(C)]`, fixed-width integer fields only (no `bool`, `Option` or enums), explicit
//!   padding fields, and a compile-time size assertion;
//! - fields in network byte order are named `*_be`;
//! - addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so one key
//!   type serves both families and an LPM prefix of IPv4 length `n` has length `96 + n`.
#![no_std]

/// Names of the maps and programs in the eBPF object. The agent pins maps under these names.
pub mod names {
    pub const PROG_FROM_ENDPOINT: &str = "from_endpoint";
    pub const PROG_TO_ENDPOINT: &str = "to_endpoint";
    /// TC egress of the node's own interfaces: judges deferred Service egress on its way out.
    pub const PROG_TO_NETWORK: &str = "to_network";
    /// `to_network` for L3 devices, whose packets have no link-layer header (tunl0, WireGuard).
    pub const PROG_TO_NETWORK_L3: &str = "to_network_l3";
    /// A program that only returns "pass": the baseline of the datapath benchmark.
    pub const PROG_EMPTY: &str = "empty";
    pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
    pub const MAP_IP_IDENTITY: &str = "IP_IDENTITY";
    pub const MAP_CIDR_IDENTITY: &str = "CIDR_IDENTITY";
    /// The NetworkPolicy tier's entries and the Service entries.
    pub const MAP_POLICY: &str = "POLICY";
    /// The ordered tiers' entries (`tier::ordered`): a trie of their own, so a NetworkPolicy
    /// lookup walks a trie that holds NetworkPolicy entries only, and the reverse.
    pub const MAP_POLICY_TIERS: &str = "POLICY_TIERS";

    /// The map that holds the entries of tier `t`.
    pub const fn policy_map(t: u8) -> &'static str {
        if crate::tier::ordered(t) {
            MAP_POLICY_TIERS
        } else {
            MAP_POLICY
        }
    }
    /// Unreplied and closing flows (LRU); the old single table's name and layout, so an
    /// upgraded agent keeps the flows its predecessor tracked.
    pub const MAP_CONNTRACK: &str = "CONNTRACK";
    /// Flows that have seen a reply: a plain hash, never evicted, per-endpoint budget.
    pub const MAP_CT_ESTABLISHED: &str = "CT_ESTABLISHED";
    /// Per interface: entries the datapath put into `CT_ESTABLISHED` (net of its own removals).
    pub const MAP_CT_USED: &str = "CT_USED";
    /// Per interface: entries the agent's garbage collector deleted from `CT_ESTABLISHED`.
    pub const MAP_CT_FREED: &str = "CT_FREED";
    /// `CtSettings`: the per-endpoint budget.
    pub const MAP_CT_SETTINGS: &str = "CT_SETTINGS";
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_CONFIG: &str = "CONFIG";
    pub const MAP_DROP_COUNTERS: &str = "DROP_COUNTERS";
    pub const MAP_FRAGMENTS: &str = "FRAGMENTS";
    pub const MAP_SERVICE_IPS: &str = "SERVICE_IPS";
    pub const MAP_PENDING: &str = "PENDING";
    pub const MAP_EVENT_BUCKETS: &str = "EVENT_BUCKETS";
    pub const MAP_NAMES: &str = "NAMES";
    pub const MAP_RULE_COUNTERS: &str = "RULE_COUNTERS";
    pub const MAP_EVENT_LIMITS: &str = "EVENT_LIMITS";
    pub const MAP_DROP_REPORTS: &str = "DROP_REPORTS";
    pub const MAP_SERVICE_BACKENDS: &str = "SERVICE_BACKENDS";
    pub const MAP_SERVICE_FLOWS: &str = "SERVICE_FLOWS";
    pub const MAP_SERVICE_DEFERRALS: &str = "SERVICE_DEFERRALS";
    pub const MAP_SERVICE_CONFIG: &str = "SERVICE_CONFIG";
    /// Every map the agent pins, in a stable order.
    pub const ALL_MAPS: [&str; 25] = [
        MAP_ENDPOINTS,
        MAP_IP_IDENTITY,
        MAP_CIDR_IDENTITY,
        MAP_POLICY,
        MAP_POLICY_TIERS,
        MAP_CONNTRACK,
        MAP_CT_ESTABLISHED,
        MAP_CT_USED,
        MAP_CT_FREED,
        MAP_CT_SETTINGS,
        MAP_EVENTS,
        MAP_CONFIG,
        MAP_DROP_COUNTERS,
        MAP_FRAGMENTS,
        MAP_SERVICE_IPS,
        MAP_PENDING,
        MAP_EVENT_BUCKETS,
        MAP_NAMES,
        MAP_RULE_COUNTERS,
        MAP_EVENT_LIMITS,
        MAP_DROP_REPORTS,
        MAP_SERVICE_BACKENDS,
        MAP_SERVICE_FLOWS,
        MAP_SERVICE_DEFERRALS,
        MAP_SERVICE_CONFIG,
    ];
}

/// Map capacities. A full map is an error that names the map (never a silent open).
pub mod capacity {
    pub const ENDPOINTS: u32 = 4096;
    pub const IP_IDENTITY: u32 = 262_144;
    pub const CIDR_IDENTITY: u32 = 65_536;
    pub const POLICY: u32 = 1_048_576;
    /// As large as `POLICY`: the planner budgets both maps' entries together against `POLICY`'s
    /// capacity, so neither can fill (LPM tries allocate per entry, so the room costs nothing).
    pub const POLICY_TIERS: u32 = POLICY;
    /// Unreplied and closing flows (LRU: a flood of new flows evicts only these).
    pub const CONNTRACK: u32 = 262_144;
    /// Flows that have seen a reply (never evicted; the garbage collector frees them).
    pub const CT_ESTABLISHED: u32 = 262_144;
    /// Interfaces with entries in `CT_ESTABLISHED` (per-endpoint accounting).
    pub const CT_ENDPOINTS: u32 = 16_384;
    /// Default per-endpoint budget of `CT_ESTABLISHED` entries (two per flow).
    pub const CT_ENDPOINT_BUDGET: u32 = 65_536;
    pub const FRAGMENTS: u32 = 8192;
    pub const SERVICE_IPS: u32 = 65_536;
    pub const NAMES: u32 = 65_536;
    /// Outstanding Service deferrals: room for every endpoint's budget twice over (a budget
    /// window can start while the last one's deferrals are still live), so no endpoint's
    /// deferrals are ever evicted by another's (see `ServiceConfig`).
    pub const PENDING: u32 = ENDPOINTS * 2 * SERVICE_DEFER_BUDGET_MAX;
    /// The most outstanding Service deferrals an endpoint may be given per window.
    pub const SERVICE_DEFER_BUDGET_MAX: u32 = 16;
    /// (Service address, port, protocol, backend address, port) of Services whose verdict is
    /// deferred for some endpoint.
    pub const SERVICE_BACKENDS: u32 = 65_536;
    /// Service flows admitted after the DNAT: the backend each was judged on.
    pub const SERVICE_FLOWS: u32 = 65_536;
    /// Flows whose last drop was reported (see `Config::drop_report_window_ms`).
    pub const DROP_REPORTS: u32 = 65_536;
    /// (policy, rule, direction) triples with traffic counted.
    pub const RULE_COUNTERS: u32 = 65_536;
    /// Bytes; must be a power of two and a multiple of the page size.
    pub const EVENTS_BYTES: u32 = 1 << 20;
}

// --- Directions -------------------------------------------------------------------------------

/// Traffic direction from the endpoint's point of view (not the TC hook's).
pub mod direction {
    /// Into the endpoint: TC egress of the host-side veth (`to_endpoint`).
    pub const INGRESS: u8 = 0;
    /// Out of the endpoint: TC ingress of the host-side veth (`from_endpoint`).
    pub const EGRESS: u8 = 1;
}

// --- Endpoints --------------------------------------------------------------------------------

/// Per-direction endpoint mode, decided by the agent. The datapath never infers isolation from
/// missing entries.
pub mod mode {
    /// Not managed by enforcer in this direction: pass without tracking.
    pub const UNMANAGED: u32 = 0;
    /// Not isolated in this direction: pass, but track so replies to it pass the other direction.
    pub const ALLOW_ALL: u32 = 1;
    /// Isolated: a new flow passes only if a policy entry allows it.
    pub const ENFORCE: u32 = 2;
    /// Held fail-closed: every packet is dropped (endpoint whose policy is not known yet).
    pub const DENY_ALL: u32 = 3;
    /// Isolated only by policies in audit mode: a new flow no rule allows passes, reported as
    /// an audit event (verdict `AUDIT`).
    pub const AUDIT: u32 = 4;
}

/// An endpoint as policy sees it in one generation (the agent's logical view; the kernel holds
/// two of these per endpoint, see `EndpointValue`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointInfo {
    /// Stable id of the endpoint (pod), used in events.
    pub endpoint_id: u32,
    /// Id of the set of policy entries this endpoint uses (`PolicyKey::policy_set`). The agent
    /// writes a complete new set under a fresh id and then flips this field, so a packet sees
    /// either the old or the new policy, never a mix.
    pub policy_set: u32,
    /// `mode::*` for traffic into the endpoint.
    pub ingress_mode: u32,
    /// `mode::*` for traffic out of the endpoint.
    pub egress_mode: u32,
    /// The ordered tiers holding rules for this endpoint, per direction (`tier::bit`): the
    /// datapath looks a tier up only when its bit is set, so NetworkPolicy-only endpoints pay
    /// nothing for the cluster-wide tiers.
    pub tiers: u32,
    /// The set of the Admin tier's entries (`PolicyKey::policy_set` of its lookups): a set of
    /// its own, shared by every endpoint the same cluster-wide rules select, whatever
    /// NetworkPolicies select each of them (so a cluster-wide rule over every pod costs its
    /// entries once, not once per endpoint). 0 when the tier holds no rules for it.
    pub tier_set: u32,
    /// The set of the Baseline tier's entries, likewise; 0 when the tier holds no rules for it
    /// in a direction NetworkPolicy does not decide. Apart from `tier_set`, so that endpoints
    /// isolated by NetworkPolicy (no Baseline) and the others share one Admin set.
    pub baseline_set: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 28);

impl EndpointInfo {
    /// Whether some ordered tier holds rules for this endpoint in direction `dir`.
    #[inline(always)]
    pub const fn tiered(&self, dir: u8) -> bool {
        self.tiers & (0xff << ((dir as u32) * 8)) != 0
    }

    /// Whether `tier` holds rules for this endpoint in direction `dir`.
    #[inline(always)]
    pub const fn has_tier(&self, dir: u8, tier: u8) -> bool {
        self.tiers & tier::bit(dir, tier) != 0
    }

    /// Why an endpoint in `DENY_ALL` is held, as reported. A `DENY_ALL` slot has no policy set,
    /// so its `policy_set` carries the reason (a `reason::*`, e.g. `ENDPOINT_CAPACITY`); 0
    /// means `ENDPOINT_UNKNOWN` for endpoint id 0 (an interface no known pod claims), else
    /// `ENDPOINT_DENY_ALL`.
    pub const fn held_reason(&self) -> u8 {
        if self.policy_set != 0 && self.policy_set < reason::COUNT as u32 {
            self.policy_set as u8
        } else if self.endpoint_id == 0 {
            reason::ENDPOINT_UNKNOWN
        } else {
            reason::ENDPOINT_DENY_ALL
        }
    }
}

/// One generation's settings of an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointSlot {
    pub policy_set: u32,
    pub ingress_mode: u32,
    pub egress_mode: u32,
    /// `EndpointInfo::tiers`.
    pub tiers: u32,
    /// `EndpointInfo::tier_set`.
    pub tier_set: u32,
    /// `EndpointInfo::baseline_set`.
    pub baseline_set: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointSlot>() == 24);

/// `ENDPOINTS` map value: key = ifindex of the host-side interface (u32).
///
/// Two generations side by side: the datapath reads `slots[Config::generation]`. The agent
/// writes the next generation into the other slot of every changed entry (endpoints, pod
/// addresses, CIDR prefixes), then switches `Config::generation` in one write, so every packet
/// sees the whole old state or the whole new one. A slot with `UNMANAGED` modes and policy set
/// 0 stands for "no endpoint in this generation".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointValue {
    pub endpoint_id: u32,
    pub slots: [EndpointSlot; 2],
}
const _: () = assert!(core::mem::size_of::<EndpointValue>() == 52);

// --- Identities -------------------------------------------------------------------------------

/// Reserved identities. Label identities and CIDR identities are allocated above these.
pub mod identity {
    /// Wildcard peer in a policy key ("from/to anywhere").
    pub const ANY: u32 = 0;
    /// The node itself (kubelet probes): always allowed into local pods.
    pub const HOST: u32 = 1;
    /// An address that is neither a known pod nor the host.
    pub const WORLD: u32 = 2;
    /// First label (pod) identity.
    pub const FIRST_LABEL: u32 = 256;
    /// First CIDR identity; CIDR identities have this bit set.
    pub const CIDR_FLAG: u32 = 1 << 24;
    /// Service identities (one per Service address, the value of `SERVICE_IPS`) have this bit
    /// set. They are never an address's identity: only the Service lookup of a new flow to a
    /// Service address uses them (see `POLICY_ACTION_DEFER`).
    pub const SERVICE_FLAG: u32 = 1 << 25;
    /// Node identities (the addresses of another node, by its labels: what a
    /// ClusterNetworkPolicy `nodes` peer selects) have this bit set. This node's own addresses
    /// are HOST.
    pub const NODE_FLAG: u32 = 1 << 26;
}

/// A 16-byte address; IPv4 is IPv4-mapped. Key of `IP_IDENTITY` and data of `CIDR_IDENTITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpAddrKey {
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IpAddrKey>() == 16);

impl IpAddrKey {
    pub const fn from_v4_octets(o: [u8; 4]) -> Self {
        Self {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
            ],
        }
    }
    pub const fn from_v6_octets(addr: [u8; 16]) -> Self {
        Self { addr }
    }
    pub fn is_v4_mapped(&self) -> bool {
        self.addr[..10].iter().all(|b| *b == 0) && self.addr[10] == 0xff && self.addr[11] == 0xff
    }
}

/// Prefix length of an IPv4 prefix of length `n` inside the IPv4-mapped space.
pub const fn v4_mapped_prefix_len(n: u32) -> u32 {
    96 + n
}

/// Value of `IP_IDENTITY` (pod IP → label identity) and of `CIDR_IDENTITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityValue {
    pub identity: u32,
    /// Endpoint id when the address is a local endpoint, else 0.
    pub endpoint_id: u32,
}
const _: () = assert!(core::mem::size_of::<IdentityValue>() == 8);

/// Kernel value of `IP_IDENTITY` and `CIDR_IDENTITY`: one identity and one owning endpoint per
/// generation (see `EndpointValue`). Identity 0 stands for "no entry in this generation" (an
/// address: WORLD; a CIDR prefix: no ipBlock covers it). `endpoint_id` is the local endpoint
/// that owns the address in that generation (0: none): `from_endpoint` lets a packet out only
/// with a source its endpoint owns, so an address moving between endpoints moves at the flip,
/// like everything else.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentitySlots {
    pub identity: [u32; 2],
    pub endpoint_id: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<IdentitySlots>() == 16);

// --- Policy -----------------------------------------------------------------------------------

/// Data of a `POLICY` LPM-trie key (the trie prepends the u32 prefix length).
///
/// Lookup precedence, written once here. Policy is a sequence of ordered tiers (`tier::*`):
/// ClusterNetworkPolicy Admin, then NetworkPolicy, then ClusterNetworkPolicy Baseline, then
/// "allowed". In each tier the datapath looks up, for a new flow,
/// 1. `(policy_set, direction, tier, peer label identity, proto, port)`
/// 2. `(policy_set, direction, tier, peer CIDR identity, proto, port)` when the peer address
///    falls in a registered prefix (ipBlocks, `networks` peers),
/// 3. `(policy_set, direction, tier, identity::ANY, proto, port)`.
///
/// Each lookup is longest-prefix over the trailing fields, so one lookup matches an exact port,
/// a port range (split into port prefixes), any port of the protocol (prefix stops before the
/// port) or any protocol (prefix stops before the protocol).
///
/// - The NetworkPolicy tier holds allows only: the first hit allows and names the rule; a miss
///   at an isolated endpoint is `NO_RULE`. It always decides for an isolated direction, so the
///   Baseline tier is consulted only where no NetworkPolicy isolates.
/// - An ordered tier (Admin, Baseline) holds the first matching rule's verdict: each entry's
///   value is already the lowest-`rank` rule covering its whole prefix (the compiler settles
///   nested prefixes), and of the three lookups the lowest `rank` wins. Accept and Deny decide;
///   Pass, or no hit, goes on to the next tier.
///
/// Field order is the wildcard order: everything before `proto` is always exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub policy_set: u32,
    pub identity: u32,
    pub direction: u8,
    /// `tier::*`.
    pub tier: u8,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// Always 0: it lies inside every port prefix, so it must never differ.
    pub _pad: u8,
    /// Destination port, big-endian so that port prefixes are bit prefixes. 0 for ICMP.
    pub port_be: u16,
    /// Always 0 (past every prefix).
    pub _reserved: u16,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 16);

impl PolicyKey {
    #[inline(always)]
    pub const fn new(
        policy_set: u32,
        identity: u32,
        direction: u8,
        tier: u8,
        proto: u8,
        port_be: u16,
    ) -> Self {
        Self {
            policy_set,
            identity,
            direction,
            tier,
            proto,
            _pad: 0,
            port_be,
            _reserved: 0,
        }
    }
}

/// Prefix lengths of `PolicyKey` (bits), for the LPM trie.
pub mod policy_prefix {
    /// `policy_set` + `identity` + `direction` + `tier`: any protocol, any port.
    pub const ANY_PROTO: u32 = 80;
    /// ... + `proto` (and the zero pad byte): any port of that protocol.
    pub const ANY_PORT: u32 = 96;
    /// Exact port.
    pub const FULL: u32 = 112;
    /// Prefix length for a port prefix of `bits` leading bits.
    pub const fn port_prefix(bits: u32) -> u32 {
        ANY_PORT + bits
    }
}

/// The tiers of policy, in evaluation order (`PolicyKey::tier`).
pub mod tier {
    /// Entries under a Service identity: the endpoint's final egress verdict for a Service port
    /// (all tiers already applied by the agent), looked up alone.
    pub const SERVICE: u8 = 0;
    /// ClusterNetworkPolicy `tier: Admin` (and AdminNetworkPolicy v1alpha1): ordered.
    pub const ADMIN: u8 = 1;
    /// Reserved for Calico's ordered policies (GlobalNetworkPolicy), between Admin and
    /// NetworkPolicy.
    pub const CALICO: u8 = 2;
    /// NetworkPolicy v1: allows only; decides for the directions it isolates.
    pub const NETWORK_POLICY: u8 = 3;
    /// ClusterNetworkPolicy `tier: Baseline` (and BaselineAdminNetworkPolicy v1alpha1): ordered.
    pub const BASELINE: u8 = 4;

    /// Whether `t` is an ordered tier (its entries live in `POLICY_TIERS`).
    #[inline(always)]
    pub const fn ordered(t: u8) -> bool {
        matches!(t, ADMIN | CALICO | BASELINE)
    }

    /// `EndpointInfo::tiers` bit of an ordered tier in a direction.
    #[inline(always)]
    pub const fn bit(dir: u8, tier: u8) -> u32 {
        1 << ((dir as u32) * 8 + tier as u32)
    }

    pub const fn name(t: u8) -> &'static str {
        match t {
            SERVICE => "Service",
            ADMIN => "Admin",
            CALICO => "Calico",
            NETWORK_POLICY => "NetworkPolicy",
            BASELINE => "Baseline",
            _ => "unknown",
        }
    }
}

pub const POLICY_ACTION_ALLOW: u8 = 1;
pub const POLICY_ACTION_DENY: u8 = 2;
/// Under a Service identity only: the endpoint's egress allows some of the Service port's
/// backends and not others, so the verdict waits for the translated packet (`PENDING`).
/// (`POLICY_ACTION_ALLOW` there means every backend is allowed; no entry, none is.)
pub const POLICY_ACTION_DEFER: u8 = 3;
/// Under a Service identity only: the verdict depends on the backend, and a backend the
/// endpoint may not reach is one no program meets once translated (the node's own address:
/// a host-networked backend), or the backends are unknown (a Service without a selector): the
/// flow is dropped as `SERVICE_UNBOUND` rather than passed unjudged.
pub const POLICY_ACTION_UNBOUND: u8 = 4;
/// An ordered tier's Pass: leaves the tier, the next tier decides.
pub const POLICY_ACTION_PASS: u8 = 5;

/// Value of a `POLICY` entry: the verdict, and the policy and rule that produced it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyValue {
    /// Agent-assigned id of the NetworkPolicy (namespace/name), for events and counters.
    pub policy_id: u32,
    /// Index of the rule within the policy's ingress or egress list.
    pub rule_index: u16,
    pub action: u8,
    /// `policy_flags::*`.
    pub flags: u8,
    /// In an ordered tier, the rule's place in the tier's order (lower decides first); the
    /// compiler numbers the rules of each tier by (priority, policy, rule). 0 elsewhere.
    pub rank: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 12);

pub mod policy_flags {
    /// Would-be drop is reported but passes (audit mode).
    pub const AUDIT: u8 = 1;
}

// --- Connection tracking ----------------------------------------------------------------------

/// `CONNTRACK` LRU key: the tuple as the packet carries it, at one interface and direction. A
/// new flow that passes inserts two entries: its own tuple at (interface, direction) and the
/// reversed tuple at (interface, other direction), so every later packet of the flow, either
/// way, costs one lookup, made before the endpoint lookup. Keyed by ifindex (what the packet
/// brings) rather than endpoint id: an entry outliving its endpoint is harmless because every
/// endpoint change bumps the policy revision, and an entry of an older revision is re-checked
/// against the interface's current endpoint before it admits anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// For ICMP echo: the identifier as `sport_be` of requests and `dport_be` of replies.
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: u16,
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

impl CtKey {
    /// The key the other direction of this flow carries at the same endpoint.
    pub fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            direction: self.direction ^ 1,
            _pad: 0,
            ifindex: self.ifindex,
        }
    }
}

pub mod ct_flags {
    /// This entry is the reply side of the flow (the endpoint did not open it in this direction).
    pub const REPLY: u16 = 1;
    /// Admitted only because of audit mode.
    pub const AUDIT: u16 = 2;
    /// A flow to a Service address (the tuple the endpoint sent): a re-check judges it as
    /// the Service lookup does (every backend, or the backend in `SERVICE_FLOWS`).
    pub const SERVICE: u16 = 4;
    /// TCP: a FIN was seen in this entry's direction (both directions: the flow is closing).
    pub const FIN: u16 = 8;
    /// Opened by the endpoint's own packet back through a Service (the endpoint mark): a
    /// re-check judges it so again, whichever direction's packet makes it (only the opening
    /// direction carries the mark).
    pub const HAIRPIN: u16 = 16;
}

/// Where a flow is in its life; both entries of a flow carry the same state. The lifetime the
/// garbage collector gives an idle entry depends on it (and on TCP or not).
pub mod ct_state {
    /// Written by an agent before states existed (value 0 in the old `flags: u32`): treated as
    /// established, promoted at its next reply.
    pub const LEGACY: u8 = 0;
    /// No reply seen yet (TCP: the SYN lifetime). Lives in the LRU.
    pub const NEW: u8 = 1;
    /// A reply was seen (TCP: handshake answered). Lives in `CT_ESTABLISHED`, or in the LRU
    /// when the endpoint was at its budget.
    pub const ESTABLISHED: u8 = 2;
    /// TCP: RST seen, or FIN both ways. Moved back to the LRU (closing lifetime).
    pub const CLOSING: u8 = 3;

    pub const fn name(s: u8) -> &'static str {
        match s {
            LEGACY => "legacy",
            NEW => "new",
            ESTABLISHED => "established",
            CLOSING => "closing",
            _ => "unknown",
        }
    }
}

/// Value of `CONNTRACK` and `CT_ESTABLISHED`. The layout is the one the single-table datapath
/// wrote (`created_ns`, `revision`, `flags: u32`, ...), with the high bytes of `flags` now
/// holding `state` and `seen` (both 0 in old entries), so the pinned LRU is shared across an
/// upgrade.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtValue {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the entry was created or changed state, or
    /// when the garbage collector last found it `seen`: the entry is idle since about then.
    pub last_ns: u64,
    /// bpf_ktime_get_ns() when the flow's first packet made the entry: its age (`maps dump
    /// conntrack`). Copied, never rewritten, when the entry moves between tables or states;
    /// written once per flow, so it costs no packet of an established flow anything.
    pub created_ns: u64,
    /// Policy revision (`Config::revision`) the flow was last judged under; a packet that finds
    /// an older one has the flow judged again under the current policy.
    pub revision: u32,
    /// `ct_flags::*`.
    pub flags: u16,
    /// `ct_state::*`.
    pub state: u8,
    /// Set by the datapath when a packet uses the entry, cleared by the garbage collector
    /// (which then moves `last_ns` forward): a per-packet timestamp would dirty the entry's
    /// cache line on every packet; this writes it once per collector pass at most.
    pub seen: u8,
    /// The policy entry that admitted the flow (0 when not admitted by a rule).
    pub policy_id: u32,
    pub rule_index: u32,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 32);

/// `CT_SETTINGS` array, index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtSettings {
    /// `CT_ESTABLISHED` entries one interface may hold (0: `capacity::CT_ENDPOINT_BUDGET`); a
    /// flow past it stays in the LRU.
    pub endpoint_budget: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CtSettings>() == 8);

/// TCP header flags the datapath tracks.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

// --- Configuration ----------------------------------------------------------------------------

/// `CONFIG` array, index 0.
///
/// The revision and the generation are one word: the generation (which slot of
/// `EndpointValue` and `IdentitySlots` is current) is the revision's lowest bit, see
/// [`Config::generation`]. The agent rewrites the whole value in one map update, which the
/// kernel copies into the array with `memcpy`, not atomically; a packet reading it at that
/// moment could take some fields from the old value and some from the new. With the generation
/// derived from the revision, whatever revision a packet acts on names its own generation: the
/// new revision with the old generation (a flow judged by the old policy and stamped as current,
/// so never re-checked) cannot be read. The datapath reads the value once per packet
/// (`read_volatile`), so it never re-reads the revision mid-packet either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Config {
    /// Bumped by the agent on every applied policy change; its lowest bit is the generation.
    pub revision: u32,
    /// `config_flags::*`.
    pub flags: u32,
    /// Where the endpoint mark sits in `skb->mark` (`endpoint_mark`): its lowest bit; 0 turns
    /// the mark off. (This word was once a separate generation field; an old pinned value of 0
    /// reads as "off" until the agent writes its own.)
    pub endpoint_mark_shift: u32,
    /// Events each endpoint may emit, in thousandths of an event per second (0: no limit); a
    /// token bucket per endpoint in the kernel, so a flood costs the event path nothing past
    /// the limit. `EVENT_LIMITS` overrides it per endpoint.
    pub event_rate_milli: u32,
    /// Events an endpoint may emit at once before the rate applies.
    pub event_burst: u32,
    /// A flow's drop is reported once per this many milliseconds (0: every drop): retries of
    /// one blocked connection make one event, not one per retransmission.
    pub drop_report_window_ms: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 24);

impl Config {
    /// Which slot (0 or 1) of `EndpointValue` and `IdentitySlots` is current: the revision's
    /// lowest bit (every install bumps the revision by one and switches the slot, in one write).
    pub const fn generation(&self) -> u32 {
        self.revision & 1
    }
}

/// The endpoint mark: `from_endpoint` writes the sending interface's slot into
/// `endpoint_mark::BITS` bits of `skb->mark` (from bit `Config::endpoint_mark_shift`, every
/// other bit kept), so a packet the node sends on, even masqueraded to a node address, still
/// says which local endpoint it came from. `to_endpoint` reads it to know a pod's own packet
/// coming back through a Service (hairpin): kube-proxy masquerades it to the node's address,
/// yet it is the pod reaching itself, which the cluster-wide tiers judge as such.
///
/// A slot is the interface index modulo 4095, plus 1 (0 is "no mark"): a mark cannot be forged
/// by a pod (the mark does not cross network namespaces, and every packet a pod sends gets its
/// slot written over), and two live interfaces share a slot only when their indexes agree
/// modulo 4095.
pub mod endpoint_mark {
    /// Width of the slot in the mark.
    pub const BITS: u32 = 12;
    /// The slot values: 1..=4095.
    pub const SLOTS: u32 = (1 << BITS) - 1;
    /// Default lowest bit: the mark's top 12 bits (0xfff00000), clear of kube-proxy's
    /// 0x4000/0x8000, kube-router's 0x10000/0x20000, Tailscale's 0xff0000 and the low bits
    /// routing rules usually match.
    pub const DEFAULT_SHIFT: u32 = 20;
    /// The largest shift that keeps all 12 bits in the word.
    pub const MAX_SHIFT: u32 = 32 - BITS;

    /// The slot of the interface `ifindex`.
    #[inline(always)]
    pub const fn slot(ifindex: u32) -> u32 {
        ifindex % SLOTS + 1
    }

    /// The mark bits the slot occupies at `shift`.
    #[inline(always)]
    pub const fn mask(shift: u32) -> u32 {
        SLOTS << shift
    }
}

/// `EVENT_BUCKETS` value: one endpoint's event token bucket (key: ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventBucket {
    /// Tokens in thousandths of an event.
    pub tokens_milli: u64,
    pub last_ns: u64,
    /// Events this endpoint did not emit because its bucket was empty.
    pub suppressed: u64,
}
const _: () = assert!(core::mem::size_of::<EventBucket>() == 24);

pub mod config_flags {
    /// Emit an event for every new flow that is allowed, not only for drops.
    pub const EVENTS_ON_ALLOW: u32 = 1;
    /// Emit no events at all (verdicts are still counted).
    pub const EVENTS_OFF: u32 = 2;
    /// An attached interface with no `ENDPOINTS` entry drops IP traffic (`ENDPOINT_UNKNOWN`)
    /// instead of passing it (`--default-deny-unknown`): the agent attaches to a pod-like
    /// interface the moment it appears, before any pod claims it.
    pub const DENY_UNKNOWN: u32 = 4;
    /// Do not count packets and bytes per rule (`RULE_COUNTERS`): saves the per-CPU hash
    /// lookup on every packet of an admitted flow (`--no-rule-counters`).
    pub const RULE_COUNTERS_OFF: u32 = 8;
}

/// `EVENT_LIMITS` value (key: ifindex): the event limit of one endpoint, from the policies that
/// select it (annotations), instead of the global one in `Config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventLimit {
    /// Thousandths of an event per second (kube-router's 10/minute is 166).
    pub rate_milli: u32,
    pub burst: u32,
}
const _: () = assert!(core::mem::size_of::<EventLimit>() == 8);

/// `RULE_COUNTERS` per-CPU hash key: traffic of the flows one policy rule admitted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleCounterKey {
    pub policy_id: u32,
    pub rule_index: u16,
    /// The rule's direction (`direction::*`): the direction the flow was opened in.
    pub direction: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<RuleCounterKey>() == 8);

/// `RULE_COUNTERS` value: packets and bytes (as TC sees them, link-layer header included) of
/// both directions of the flows the rule admitted, first packet included.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleCounter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<RuleCounter>() == 16);

/// `DROP_COUNTERS` per-CPU array: index `reason::*` counts new-flow verdicts (drops and
/// allows) by reason; the slots after them count datapath-internal events.
pub mod counter {
    /// Events that did not fit in the ring buffer (the verdict still applied).
    pub const EVENTS_LOST: u32 = super::reason::COUNT as u32;
    /// Events held back by an endpoint's rate limit (the verdict still applied).
    pub const EVENTS_SUPPRESSED: u32 = super::reason::COUNT as u32 + 1;
    /// Drops not reported because the same flow's drop was reported within
    /// `Config::drop_report_window_ms` (a SYN retransmitted, a datagram resent).
    pub const EVENTS_REPEATED: u32 = super::reason::COUNT as u32 + 2;
    /// Conntrack entries the datapath inserted into the `CONNTRACK` LRU (new flows, two each;
    /// closing flows moved back from `CT_ESTABLISHED`).
    pub const CT_INSERTED: u32 = super::reason::COUNT as u32 + 3;
    /// Entries moved from the LRU to `CT_ESTABLISHED` when their flow saw a reply.
    pub const CT_PROMOTED: u32 = super::reason::COUNT as u32 + 4;
    /// Flows that saw a reply but stayed in the LRU: their endpoint was at its budget, or
    /// `CT_ESTABLISHED` was full.
    pub const CT_OVER_BUDGET: u32 = super::reason::COUNT as u32 + 5;
    /// Entries of closing flows moved from `CT_ESTABLISHED` back to the LRU.
    pub const CT_DEMOTED: u32 = super::reason::COUNT as u32 + 6;
    /// Entries the datapath deleted (flows revoked by a policy change).
    pub const CT_REVOKED: u32 = super::reason::COUNT as u32 + 7;
    /// Expired entries the agent's garbage collector deleted from the LRU (written by the
    /// agent, in CPU 0's slot).
    pub const CT_GC_DELETED: u32 = super::reason::COUNT as u32 + 8;
    /// Expired entries the garbage collector deleted from `CT_ESTABLISHED` (agent, CPU 0).
    pub const CT_GC_DELETED_ESTABLISHED: u32 = super::reason::COUNT as u32 + 9;
    /// Number of slots.
    pub const LEN: u32 = super::reason::COUNT as u32 + 10;

    /// The name of a slot after the reasons (`/metrics`, `maps dump`).
    pub const fn name(i: u32) -> &'static str {
        match i {
            EVENTS_LOST => "events-lost",
            EVENTS_SUPPRESSED => "events-suppressed",
            EVENTS_REPEATED => "events-repeated",
            CT_INSERTED => "ct-inserted",
            CT_PROMOTED => "ct-promoted",
            CT_OVER_BUDGET => "ct-over-budget",
            CT_DEMOTED => "ct-demoted",
            CT_REVOKED => "ct-revoked",
            CT_GC_DELETED => "ct-gc-deleted",
            CT_GC_DELETED_ESTABLISHED => "ct-gc-deleted-established",
            _ => "unknown",
        }
    }
}

// --- Services ---------------------------------------------------------------------------------

/// `PENDING` LRU key: a new flow from a local endpoint to a Service port whose backends its
/// egress policy partly allows (`POLICY_ACTION_DEFER`): judged after kube-proxy's DNAT, where
/// the backend is known. DNAT keeps the source address, port and protocol, so they find the
/// flow again on the far side of netfilter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PendingKey {
    pub saddr: [u8; 16],
    pub sport_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PendingKey>() == 20);

/// A deferral: only a packet to one of the Service port's backends (`SERVICE_BACKENDS`) that
/// the endpoint did not send there itself (no conntrack entry at the sender) may claim it, and
/// only within `ServiceConfig::defer_ms` of `created_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PendingValue {
    /// bpf_ktime_get_ns() of the deferral.
    pub created_ns: u64,
    /// The Service address and port the endpoint sent to.
    pub daddr: [u8; 16],
    pub dport_be: u16,
    pub _pad: u16,
    /// Interface of the sending endpoint.
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<PendingValue>() == 32);

/// `SERVICE_BACKENDS` hash key: one backend of one Service port (value: 1). Written by the
/// agent for the Service ports some local endpoint has a deferred verdict for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceBackendKey {
    pub service_addr: [u8; 16],
    pub backend_addr: [u8; 16],
    pub service_port_be: u16,
    pub backend_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<ServiceBackendKey>() == 40);

/// `SERVICE_FLOWS` LRU value (key: the `CtKey` the endpoint sent, at its interface): the
/// backend a deferred Service flow was judged on, so a policy change judges it again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceFlowValue {
    pub backend_addr: [u8; 16],
    pub backend_port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceFlowValue>() == 20);

/// `SERVICE_DEFERRALS` LRU value (key: ifindex): an endpoint's deferral budget. At most
/// `ServiceConfig::budget` deferrals outstanding per window of `defer_ms` (a claim gives its
/// place back); past it the endpoint's new deferred flows drop as `SERVICE_UNBOUND`, and no
/// other endpoint's deferral is touched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeferralBudget {
    pub window_start_ns: u64,
    pub outstanding: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<DeferralBudget>() == 16);

/// `SERVICE_CONFIG` array, index 0 (0 in a field: its default).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceConfig {
    /// How long a deferral waits for its translated packet (default 1000 ms).
    pub defer_ms: u32,
    /// Deferrals an endpoint may have outstanding per window (default and at most
    /// `capacity::SERVICE_DEFER_BUDGET_MAX`).
    pub budget: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceConfig>() == 8);

pub mod service_defaults {
    pub const DEFER_MS: u32 = 1000;
    pub const BUDGET: u32 = super::capacity::SERVICE_DEFER_BUDGET_MAX;
}

// --- Names ------------------------------------------------------------------------------------

/// `NAMES` map: what the agent's ids stand for, so `maps dump` and other readers of the pins
/// can name policies and identities. Written by the agent, never read by the datapath.
pub mod name_kind {
    /// `NameKey::id` is a policy id; the name is `namespace/name`.
    pub const POLICY: u32 = 1;
    /// `NameKey::id` is an identity; the name is its labels or ipBlocks.
    pub const IDENTITY: u32 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    pub kind: u32,
    pub id: u32,
}
const _: () = assert!(core::mem::size_of::<NameKey>() == 8);

/// A name, UTF-8, zero-padded (cut at a character boundary when longer).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameValue {
    pub bytes: [u8; 248],
}
const _: () = assert!(core::mem::size_of::<NameValue>() == 248);

impl NameValue {
    pub fn new(s: &str) -> Self {
        let mut bytes = [0u8; 248];
        let mut end = s.len().min(bytes.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        Self { bytes }
    }
    pub fn as_str(&self) -> &str {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.bytes.len());
        core::str::from_utf8(&self.bytes[..end]).unwrap_or("")
    }
}

// --- Fragments --------------------------------------------------------------------------------

/// `FRAGMENTS` LRU key: one fragmented datagram. The first fragment carries the ports; when it
/// passes, its ports are remembered here so the later fragments are judged on the same tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// IPv4 identification (16 bits, zero-extended) or IPv6 fragment identification.
    pub id: u32,
    /// IPv4: the protocol; IPv6: the fragment header's next header (what every fragment of the
    /// datagram carries alike).
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragValue {
    pub sport_be: u16,
    pub dport_be: u16,
    /// The first fragment's transport protocol: for IPv6 the key holds the fragment header's
    /// next header, which differs when more extension headers follow it.
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 8);

// --- Events -----------------------------------------------------------------------------------

pub mod verdict {
    pub const ALLOW: u8 = 1;
    pub const DROP: u8 = 2;
    pub const AUDIT: u8 = 3;
}

/// Why a packet was dropped (or, for `verdict::ALLOW`, why it passed).
pub mod reason {
    /// Allowed by a policy rule.
    pub const ALLOWED_BY_RULE: u8 = 0;
    /// The endpoint is isolated in this direction and no rule allows the flow.
    pub const NO_RULE: u8 = 1;
    /// Denied by a deny rule.
    pub const DENY_RULE: u8 = 2;
    /// The endpoint is held fail-closed.
    pub const ENDPOINT_DENY_ALL: u8 = 3;
    /// The packet could not be parsed (truncated or malformed headers).
    pub const MALFORMED: u8 = 4;
    /// Allowed because the endpoint is not isolated in this direction.
    pub const ALLOWED_NOT_ISOLATED: u8 = 5;
    /// Allowed because the peer is the node itself.
    pub const ALLOWED_HOST: u8 = 6;
    /// A non-first fragment whose first fragment was not seen (or not allowed): its ports are
    /// unknown, so no port rule can be checked.
    pub const FRAGMENT_UNKNOWN: u8 = 7;
    /// An established flow that the current policy no longer allows (re-checked once after a
    /// policy change).
    pub const POLICY_REVOKED: u8 = 8;
    /// Passed in audit mode; the policies in audit mode would have dropped it.
    pub const AUDIT_WOULD_DROP: u8 = 9;
    /// The interface looks like a pod's but no known pod claims it yet; held fail-closed
    /// (`--default-deny-unknown`): an `ENDPOINT_DENY_ALL` endpoint with id 0.
    pub const ENDPOINT_UNKNOWN: u8 = 10;
    /// A packet from an endpoint whose source address is not one of that endpoint's.
    pub const SPOOFED: u8 = 11;
    /// An address no real packet carries: an IPv4-mapped IPv6 address (`::ffff:0:0/96`) on the
    /// wire, which would alias an IPv4 key.
    pub const INVALID_ADDRESS: u8 = 12;
    /// The endpoint's conntrack budget is spent: a new flow is refused rather than evicting
    /// another endpoint's flows.
    pub const CT_BUDGET: u8 = 13;
    /// A flow to a Service address that cannot be bound to its translated flow (the endpoint's
    /// deferrals are spent, or the backend is not one of the Service's).
    pub const SERVICE_UNBOUND: u8 = 14;
    /// The interface is claimed by two pods, or a pod's address shows up behind another pod's
    /// interface: both are held fail-closed until it is resolved.
    pub const ENDPOINT_CONFLICT: u8 = 15;
    /// The endpoint's policy does not fit in the maps: held fail-closed.
    pub const ENDPOINT_CAPACITY: u8 = 16;
    /// Slots reserved for reasons in the counters.
    pub const COUNT: usize = 24;

    pub const fn name(r: u8) -> &'static str {
        match r {
            ALLOWED_BY_RULE => "allowed-by-rule",
            NO_RULE => "no-rule-allows",
            DENY_RULE => "denied-by-rule",
            ENDPOINT_DENY_ALL => "endpoint-deny-all",
            MALFORMED => "malformed-packet",
            ALLOWED_NOT_ISOLATED => "not-isolated",
            ALLOWED_HOST => "host",
            FRAGMENT_UNKNOWN => "fragment-without-first",
            POLICY_REVOKED => "policy-revoked",
            AUDIT_WOULD_DROP => "audit-would-drop",
            ENDPOINT_UNKNOWN => "endpoint-unknown",
            SPOOFED => "spoofed-source",
            INVALID_ADDRESS => "invalid-address",
            CT_BUDGET => "conntrack-budget",
            SERVICE_UNBOUND => "service-unbound",
            ENDPOINT_CONFLICT => "endpoint-conflict",
            ENDPOINT_CAPACITY => "endpoint-capacity",
            _ => "unknown",
        }
    }
}

/// Fixed-size record on the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    pub timestamp_ns: u64,
    pub endpoint_id: u32,
    pub ifindex: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub direction: u8,
    pub verdict: u8,
    pub reason: u8,
    /// Peer label identity and CIDR identity (0 when none) the datapath resolved.
    pub peer_identity: u32,
    pub peer_cidr_identity: u32,
    /// The policy entry that decided (0 when none).
    pub policy_id: u32,
    pub rule_index: u16,
    /// IPv4 or IPv6 (4 or 6).
    pub family: u8,
    /// `tier::*` of the rule that decided (meaningful when `policy_id` is not 0).
    pub tier: u8,
    /// Length of the packet on the wire.
    pub packet_len: u32,
    pub policy_set: u32,
}
const _: () = assert!(core::mem::size_of::<Event>() == 80);

// --- aya glue ---------------------------------------------------------------------------------

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: every type is repr(C), made only of integers and arrays of integers, with explicit
    // padding, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for EndpointSlot {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for IdentitySlots {}
    unsafe impl aya::Pod for IpAddrKey {}
    unsafe impl aya::Pod for IdentityValue {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for CtSettings {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for PendingKey {}
    unsafe impl aya::Pod for EventBucket {}
    unsafe impl aya::Pod for NameKey {}
    unsafe impl aya::Pod for NameValue {}
    unsafe impl aya::Pod for PendingValue {}
    unsafe impl aya::Pod for ServiceBackendKey {}
    unsafe impl aya::Pod for ServiceFlowValue {}
    unsafe impl aya::Pod for DeferralBudget {}
    unsafe impl aya::Pod for ServiceConfig {}
    unsafe impl aya::Pod for EventLimit {}
    unsafe impl aya::Pod for RuleCounterKey {}
    unsafe impl aya::Pod for RuleCounter {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn ct_reverse_is_an_involution() {
        let k = CtKey {
            saddr: [1; 16],
            daddr: [2; 16],
            sport_be: 10,
            dport_be: 20,
            proto: 6,
            direction: direction::EGRESS,
            _pad: 0,
            ifindex: 7,
        };
        let r = k.reversed();
        assert_eq!(r.saddr, [2; 16]);
        assert_eq!(r.direction, direction::INGRESS);
        assert_eq!(r.sport_be, 20);
        assert_eq!(r.reversed(), k);
    }

    #[test]
    fn v4_mapped() {
        let k = IpAddrKey::from_v4_octets([10, 0, 0, 1]);
        assert!(k.is_v4_mapped());
        assert!(!IpAddrKey::from_v6_octets([0xfd; 16]).is_v4_mapped());
        assert_eq!(v4_mapped_prefix_len(24), 120);
    }

    #[test]
    fn policy_prefixes_cover_the_key() {
        // Every field up to the port is in the prefix; `_reserved` (past it) never is.
        assert_eq!(
            policy_prefix::FULL as usize,
            core::mem::offset_of!(PolicyKey, _reserved) * 8
        );
        assert_eq!(policy_prefix::port_prefix(16), policy_prefix::FULL);
    }
}
