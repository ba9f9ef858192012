//! Every map the datapath uses, and the configuration read once per packet.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use enforcer_common::*;

use crate::parse::Packet;

// --- Maps -------------------------------------------------------------------------------------

#[map]
pub(crate) static ENDPOINTS: HashMap<u32, EndpointValue> =
    HashMap::with_max_entries(capacity::ENDPOINTS, 0);

#[map]
pub(crate) static IP_IDENTITY: HashMap<IpAddrKey, IdentitySlots> =
    HashMap::with_max_entries(capacity::IP_IDENTITY, 0);

#[map]
pub(crate) static CIDR_IDENTITY: LpmTrie<IpAddrKey, IdentitySlots> =
    LpmTrie::with_max_entries(capacity::CIDR_IDENTITY, 0);

/// NetworkPolicy and Service entries.
#[map]
pub(crate) static POLICY: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(capacity::POLICY, 0);

/// The ordered tiers' entries (Admin, Calico, Baseline): a trie of their own, so that no
/// lookup walks past the other kind's entries.
#[map]
pub(crate) static POLICY_TIERS: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(capacity::POLICY_TIERS, 0);

/// Flows without a reply yet, and closing flows: a flood of new flows evicts only these.
#[map]
pub(crate) static CONNTRACK: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

/// Flows that have seen a reply: a plain hash (never evicted, and a cheaper lookup than the
/// LRU's), emptied by the agent's garbage collector; each interface holds at most its budget.
#[map]
pub(crate) static CT_ESTABLISHED: HashMap<CtKey, CtValue> =
    HashMap::with_max_entries(capacity::CT_ESTABLISHED, 0);

/// Per interface: `CT_ESTABLISHED` entries the datapath added, net of those it removed itself
/// (atomic adds; the datapath is the only writer).
#[map]
pub(crate) static CT_USED: HashMap<u32, u64> = HashMap::with_max_entries(capacity::CT_ENDPOINTS, 0);

/// Per interface: `CT_ESTABLISHED` entries the agent's garbage collector deleted (the agent is
/// the only writer). In use = `CT_USED` - `CT_FREED`.
#[map]
pub(crate) static CT_FREED: HashMap<u32, u64> =
    HashMap::with_max_entries(capacity::CT_ENDPOINTS, 0);

#[map]
pub(crate) static CT_SETTINGS: Array<CtSettings> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static FRAGMENTS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(capacity::FRAGMENTS, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Service (ClusterIP) addresses → their Service identity (see `identity::SERVICE_FLAG`).
#[map]
pub(crate) static SERVICE_IPS: HashMap<IpAddrKey, u32> =
    HashMap::with_max_entries(capacity::SERVICE_IPS, 0);

/// New flows to a Service port with mixed backends, waiting for the translated packet (see
/// `PendingKey`). Each endpoint's share is bounded by `SERVICE_DEFERRALS`.
#[map]
pub(crate) static PENDING: LruHashMap<PendingKey, PendingValue> =
    LruHashMap::with_max_entries(capacity::PENDING, 0);

/// The backends a deferral may be claimed by (see `ServiceBackendKey`).
#[map]
pub(crate) static SERVICE_BACKENDS: HashMap<ServiceBackendKey, u32> =
    HashMap::with_max_entries(capacity::SERVICE_BACKENDS, 0);

/// The backend each deferred Service flow was admitted for (key: the tuple sent).
#[map]
pub(crate) static SERVICE_FLOWS: LruHashMap<CtKey, ServiceFlowValue> =
    LruHashMap::with_max_entries(capacity::SERVICE_FLOWS, 0);

/// Per-endpoint deferral budgets (key: ifindex).
#[map]
pub(crate) static SERVICE_DEFERRALS: LruHashMap<u32, DeferralBudget> =
    LruHashMap::with_max_entries(capacity::ENDPOINTS, 0);

/// Deferral lifetime and budget (index 0).
#[map]
pub(crate) static SERVICE_CONFIG: Array<ServiceConfig> = Array::with_max_entries(1, 0);

/// Per-endpoint event token buckets (see `Config::event_rate`).
#[map]
pub(crate) static EVENT_BUCKETS: LruHashMap<u32, EventBucket> =
    LruHashMap::with_max_entries(capacity::ENDPOINTS, 0);

/// What the agent's ids stand for (see `enforcer_common::name_kind`); for readers of the pins,
/// never read here.
#[map]
pub(crate) static NAMES: HashMap<NameKey, NameValue> =
    HashMap::with_max_entries(capacity::NAMES, 0);

/// Per-CPU scratch space for the parsed packet: the 512-byte BPF stack cannot hold it beside
/// the conntrack and policy keys.
#[map]
pub(crate) static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Packets and bytes per admitting rule (see `RuleCounterKey`).
#[map]
pub(crate) static RULE_COUNTERS: PerCpuHashMap<RuleCounterKey, RuleCounter> =
    PerCpuHashMap::with_max_entries(capacity::RULE_COUNTERS, 0);

/// When each recently dropped flow was last reported (`Config::drop_report_window_ms`).
#[map]
pub(crate) static DROP_REPORTS: LruHashMap<CtKey, u64> =
    LruHashMap::with_max_entries(capacity::DROP_REPORTS, 0);

/// Per-endpoint event limits from policy annotations (key: ifindex); absent: `Config`'s.
#[map]
pub(crate) static EVENT_LIMITS: HashMap<u32, EventLimit> =
    HashMap::with_max_entries(capacity::ENDPOINTS, 0);

/// The configuration, read once per packet. Volatile, so the compiler cannot turn later uses
/// into re-reads of the map value (which the agent may rewrite meanwhile): every decision of one
/// packet uses one revision, and the generation is derived from that revision (see
/// `enforcer_common::Config`), so the two always agree.
#[inline(always)]
pub(crate) fn config() -> Config {
    match CONFIG.get_ptr(0) {
        // SAFETY: slot 0 of a one-slot array: a valid, aligned `Config` for the program's life.
        Some(c) => unsafe { core::ptr::read_volatile(c) },
        None => Config {
            revision: 0,
            flags: 0,
            endpoint_mark_shift: 0,
            event_rate_milli: 0,
            event_burst: 0,
            drop_report_window_ms: 0,
        },
    }
}
