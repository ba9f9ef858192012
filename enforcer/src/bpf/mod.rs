//! The kernel edge: load the embedded eBPF object, pin its maps, attach its programs to endpoint
//! interfaces, install map diffs (all or nothing), and read events and counters back.
//!
//! Everything policy-shaped is decided before this module: it receives a [`MapDiff`] and writes
//! it in [`MapDiff::steps`] order. When a write fails, the writes already done are undone in
//! reverse order, so the maps hold exactly the previous state and it keeps enforcing.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{
    Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, MapError, MapType, PerCpuArray,
    PerCpuHashMap, RingBuf,
};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader, Pod};
use enforcer_common::{
    Config, CtKey, CtSettings, CtValue, EndpointValue, Event, EventBucket, EventLimit,
    IdentitySlots, IpAddrKey, NameKey, NameValue, PendingKey, PendingValue, PolicyValue,
    RuleCounter, RuleCounterKey, ServiceBackendKey, ServiceConfig, counter, names,
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::state::{Lpm, MapState, PhysState, PhysWrite};

pub mod ct;
mod pins;

pub use pins::{PinSnapshot, Usage};

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("ENFORCER_BPF_OBJECT_PATH"));

/// Each variant says what failed (the program, the map, the write) and then why, once, in its
/// message and not again as a chained source (so `{e}` and `{e:#}` say the same): an aya error
/// is kept as [`AyaError`], one line with its causes (aya's own errors both print and chain
/// some of them).
#[derive(Debug, Error)]
pub enum BpfError {
    #[error("loading the eBPF object: {0}")]
    Load(AyaError),
    #[error("program {name}: {error}")]
    Program { name: &'static str, error: AyaError },
    #[error("map {name}: {error}")]
    Map { name: &'static str, error: AyaError },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("interface with ifindex {ifindex}: {reason}")]
    Interface { ifindex: u32, reason: String },
    #[error("{what} under {path}: {error}")]
    Pin {
        what: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("writing {write}: {error} (rolled back {undone} earlier writes)")]
    Install {
        write: String,
        undone: usize,
        error: AyaError,
    },
    #[error(
        "writing {write}: {error}; rolling back failed too ({rollback}): the maps may be inconsistent until the next install"
    )]
    Rollback {
        write: String,
        rollback: String,
        error: AyaError,
    },
}

/// An aya error as one line: its message, then each cause that the text so far does not
/// already say (`map error: {0}` over the same error, `returned {io_error}` with the same
/// error as its source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AyaError(pub String);

impl AyaError {
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let s = c.to_string();
            if !text.contains(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
            cause = c.source();
        }
        AyaError(text)
    }
}

impl std::fmt::Display for AyaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AyaError {}

pub type Result<T, E = BpfError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |e| BpfError::Map {
        name,
        error: AyaError::of(&e),
    }
}

/// The two endpoint programs (and the benchmark's baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    FromEndpoint,
    ToEndpoint,
    ToNetwork,
    /// `to_network` for L3 devices (no link-layer header: tunl0, WireGuard).
    ToNetworkL3,
    Empty,
}

impl Prog {
    pub fn name(self) -> &'static str {
        match self {
            Prog::FromEndpoint => names::PROG_FROM_ENDPOINT,
            Prog::ToEndpoint => names::PROG_TO_ENDPOINT,
            Prog::ToNetwork => names::PROG_TO_NETWORK,
            Prog::ToNetworkL3 => names::PROG_TO_NETWORK_L3,
            Prog::Empty => names::PROG_EMPTY,
        }
    }
    /// The TC hook of the host-side interface the program sits on.
    fn hook(self) -> TcAttachType {
        match self {
            // What the pod sends enters the host at the veth's ingress.
            Prog::FromEndpoint | Prog::Empty => TcAttachType::Ingress,
            Prog::ToEndpoint | Prog::ToNetwork | Prog::ToNetworkL3 => TcAttachType::Egress,
        }
    }
}

/// How one program is attached to one interface.
enum Attachment {
    /// TCX link, pinned so enforcement survives the agent (and is replaced in place on restart).
    Tcx(PinnedLink),
    /// TCX link of an unpinned datapath (tests): detached when dropped.
    TcxOwned(FdLink),
    /// clsact filter (kernels without TCX); lives on the interface until removed.
    Netlink(SchedClassifierLink),
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    /// The program's return value (`TC_ACT_*`, -1 is "pass to the next").
    pub verdict: i32,
    /// Kernel-measured time per run.
    pub duration: Duration,
    /// `skb->mark` as the program left it.
    pub mark: u32,
}

/// The `__sk_buff` fields `BPF_PROG_TEST_RUN` takes from a test (the kernel's
/// `convert___skb_to_skb`; every other field must be zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestSkb {
    /// `skb_iif`: the interface the packet entered the node through; 0 for a packet the node
    /// sent itself.
    pub ingress_ifindex: u32,
    /// `skb->mark` (the endpoint mark lives there: `enforcer_common::endpoint_mark`).
    pub mark: u32,
    /// GSO segment size and count: non-zero make a GSO packet (e.g. IPv4 BIG TCP).
    pub gso_size: u32,
    pub gso_segs: u32,
}

impl TestSkb {
    /// `struct __sk_buff` (uapi/linux/bpf.h), 192 bytes, with the settable fields filled in.
    fn to_ctx(self, ifindex: u32) -> [u8; 192] {
        const MARK: usize = 8;
        const INGRESS_IFINDEX: usize = 36;
        const IFINDEX: usize = 40;
        const GSO_SEGS: usize = 164;
        const GSO_SIZE: usize = 176;
        let mut c = [0u8; 192];
        let mut put = |off: usize, v: u32| c[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        put(MARK, self.mark);
        put(INGRESS_IFINDEX, self.ingress_ifindex);
        // The device the packet is handed in on: loopback unless said otherwise.
        put(IFINDEX, ifindex.max(1));
        put(GSO_SEGS, self.gso_segs);
        put(GSO_SIZE, self.gso_size);
        c
    }
}

/// TC_ACT_UNSPEC: the datapath's "pass".
pub const TC_PASS: i32 = -1;
/// TC_ACT_SHOT.
pub const TC_DROP: i32 = 2;

/// The loaded datapath of one agent.
pub struct Datapath {
    ebpf: Ebpf,
    /// Pin folder; `None` for an unpinned instance (tests, benchmarks).
    bpffs: Option<PathBuf>,
    attached: BTreeMap<u32, Vec<Attachment>>,
    /// The node's own interfaces (`to_network`).
    host_attached: BTreeMap<u32, Vec<Attachment>>,
    events: Option<RingBuf<MapData>>,
    /// What the maps hold (both generations), kept in step with every write.
    phys: PhysState,
    /// Events per second and burst per endpoint (0: unlimited), written with every `Config`.
    event_limits: (u32, u32),
    drop_report_window_ms: u32,
    /// `Config::endpoint_mark_shift` (0: off).
    endpoint_mark_shift: u32,
}

/// What an install did.
#[derive(Debug, Default)]
pub struct Installed {
    pub writes: usize,
    /// The revision now in `CONFIG` (the one asked for, or the next: its lowest bit is the
    /// generation).
    pub revision: u32,
    /// Clean-up writes that failed after the switch (the new state is in force regardless).
    pub cleanup_errors: Vec<String>,
}

impl Datapath {
    /// Loads the embedded object with its maps pinned under `bpffs` (reusing pins that exist, so
    /// a restarted agent keeps the state and conntrack of the one before it).
    pub fn load(bpffs: &Path) -> Result<Self> {
        std::fs::create_dir_all(bpffs.join("links")).map_err(|error| BpfError::Pin {
            what: "creating the pin folder".into(),
            path: bpffs.to_path_buf(),
            error,
        })?;
        let paths: Vec<(&'static str, PathBuf)> = names::ALL_MAPS
            .iter()
            .map(|n| (*n, bpffs.join(n)))
            .collect();
        replace_incompatible_pins(&paths);
        let mut loader = EbpfLoader::new();
        for (n, p) in &paths {
            loader.map_pin_path(n, p.as_path());
        }
        let ebpf = loader
            .load(OBJECT)
            .map_err(|e| BpfError::Load(AyaError::of(&e)))?;
        Self::finish(ebpf, Some(bpffs.to_path_buf()))
    }

    /// Writes the conntrack settings the datapath reads (the per-endpoint budget).
    pub fn set_ct_settings(&mut self, s: CtSettings) -> Result<()> {
        ct::set_settings(self.map_mut(names::MAP_CT_SETTINGS)?, s)
    }

    /// Own handles on the conntrack tables, for the garbage collector's thread.
    pub fn ct_tables(&self) -> Result<ct::CtTables> {
        ct::CtTables::open(|n| self.map(n))
    }

    /// Loads the embedded object without pins: private maps, for tests and benchmarks.
    pub fn load_unpinned() -> Result<Self> {
        Self::load_unpinned_with(&[])
    }

    /// As [`Self::load_unpinned`], with some maps' capacities overridden (benchmarks).
    pub fn load_unpinned_with(max_entries: &[(&'static str, u32)]) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for (n, size) in max_entries {
            loader.map_max_entries(n, *size);
        }
        let ebpf = loader
            .load(OBJECT)
            .map_err(|e| BpfError::Load(AyaError::of(&e)))?;
        Self::finish(ebpf, None)
    }

    fn finish(mut ebpf: Ebpf, bpffs: Option<PathBuf>) -> Result<Self> {
        for prog in [
            Prog::FromEndpoint,
            Prog::ToEndpoint,
            Prog::ToNetwork,
            Prog::ToNetworkL3,
            Prog::Empty,
        ] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(prog.name())
                .ok_or(BpfError::MissingMap(prog.name()))?
                .try_into()
                .map_err(|source| BpfError::Program {
                    name: prog.name(),
                    error: AyaError::of(&source),
                })?;
            p.load().map_err(|source| BpfError::Program {
                name: prog.name(),
                error: AyaError::of(&source),
            })?;
        }
        let events = match ebpf.take_map(names::MAP_EVENTS) {
            Some(m) => Some(RingBuf::try_from(m).map_err(map_err(names::MAP_EVENTS))?),
            None => return Err(BpfError::MissingMap(names::MAP_EVENTS)),
        };
        let mut dp = Self {
            ebpf,
            bpffs,
            attached: BTreeMap::new(),
            host_attached: BTreeMap::new(),
            events,
            phys: PhysState::default(),
            event_limits: (0, 0),
            drop_report_window_ms: 0,
            endpoint_mark_shift: enforcer_common::endpoint_mark::DEFAULT_SHIFT,
        };
        dp.phys = dp.read_phys()?;
        Ok(dp)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or(BpfError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf.map(name).ok_or(BpfError::MissingMap(name))
    }

    /// How many instructions the kernel's verifier processed to load each program
    /// (`bpf_prog_info.verified_insns`), against its limit of a million: the headroom every
    /// datapath change spends.
    pub fn verified_instructions(&mut self) -> Result<Vec<(&'static str, u32)>> {
        let mut out = Vec::new();
        for prog in [
            Prog::FromEndpoint,
            Prog::ToEndpoint,
            Prog::ToNetwork,
            Prog::ToNetworkL3,
        ] {
            let info = self
                .program(prog)?
                .info()
                .map_err(|source| BpfError::Program {
                    name: prog.name(),
                    error: AyaError::of(&source),
                })?;
            out.push((prog.name(), info.verified_instruction_count().unwrap_or(0)));
        }
        Ok(out)
    }

    fn program(&mut self, prog: Prog) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(prog.name())
            .ok_or(BpfError::MissingMap(prog.name()))?
            .try_into()
            .map_err(|source| BpfError::Program {
                name: prog.name(),
                error: AyaError::of(&source),
            })
    }

    /// How many entries `POLICY` holds: the kernel's word for the pinned map (a map pinned by
    /// an earlier agent keeps the size it was created with), else the object's. The planner's
    /// budget for `POLICY` and `POLICY_TIERS` together (`POLICY_TIERS` is created as large as
    /// the object's `POLICY`).
    pub fn policy_capacity(&self) -> u32 {
        self.bpffs
            .as_ref()
            .and_then(|b| aya::maps::MapInfo::from_pin(b.join(names::MAP_POLICY)).ok())
            .map(|i| i.max_entries())
            .unwrap_or(enforcer_common::capacity::POLICY)
    }

    /// What the maps hold now, as the current generation sees it (agent restart, tests).
    pub fn read_state(&self) -> Result<MapState> {
        Ok(read_phys(|n| self.map(n))?.logical())
    }

    /// Both generations, as the maps hold them.
    pub fn read_phys(&self) -> Result<PhysState> {
        read_phys(|n| self.map(n))
    }

    /// Forgets what this process believes the maps hold and reads them again, so the next
    /// install writes against what is really there (drift repair).
    pub fn reread(&mut self) -> Result<()> {
        self.phys = self.read_phys()?;
        Ok(())
    }

    /// Interfaces this process has attached to.
    pub fn attached(&self) -> Vec<u32> {
        self.attached.keys().copied().collect()
    }

    /// Attaches both endpoint programs to the interface `ifindex` (idempotent). With TCX, a link
    /// pinned by an earlier agent is updated in place to this process's programs
    /// (make-before-break) rather than detached and attached again.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let name = ifname(ifindex)?;
        let mut done = Vec::new();
        for prog in [Prog::FromEndpoint, Prog::ToEndpoint] {
            done.push(self.attach_one(ifindex, &name, prog)?);
        }
        self.attached.insert(ifindex, done);
        Ok(())
    }

    fn link_pin(&self, ifindex: u32, prog: Prog) -> Option<PathBuf> {
        self.bpffs
            .as_ref()
            .map(|b| b.join("links").join(format!("{ifindex}-{}", prog.name())))
    }

    fn attach_one(&mut self, ifindex: u32, ifname: &str, prog: Prog) -> Result<Attachment> {
        let pin = self.link_pin(ifindex, prog);
        let perr = |source: aya::programs::ProgramError| BpfError::Program {
            name: prog.name(),
            error: AyaError::of(&source),
        };
        // A pin left by an earlier agent: swap our program into the live link.
        if let Some(pin) = &pin
            && pin.exists()
        {
            match PinnedLink::from_pin(pin) {
                Ok(old) => {
                    let fd: FdLink = old.into();
                    if let Ok(link) = SchedClassifierLink::try_from(fd) {
                        let p = self.program(prog)?;
                        match p.attach_to_link(link) {
                            Ok(id) => {
                                let link = p.take_link(id).map_err(perr)?;
                                let fd: FdLink =
                                    link.try_into().map_err(|e| BpfError::Interface {
                                        ifindex,
                                        reason: format!("re-taking pinned link: {e}"),
                                    })?;
                                // The pin still names this link; keep it as it is.
                                let _ = std::fs::remove_file(pin);
                                let pinned = fd.pin(pin).map_err(|e| BpfError::Interface {
                                    ifindex,
                                    reason: format!("re-pinning link: {e}"),
                                })?;
                                return Ok(Attachment::Tcx(pinned));
                            }
                            Err(e) => debug!(ifindex, "stale link pin {}: {e}", pin.display()),
                        }
                    }
                }
                Err(e) => debug!(ifindex, "unreadable link pin {}: {e}", pin.display()),
            }
            let _ = std::fs::remove_file(pin);
        }
        let p = self.program(prog)?;
        match p.attach_with_options(
            ifname,
            prog.hook(),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(id) => {
                let link = p.take_link(id).map_err(perr)?;
                let fd: FdLink = link.try_into().map_err(|e| BpfError::Interface {
                    ifindex,
                    reason: format!("TCX link: {e}"),
                })?;
                match pin {
                    Some(pin) => {
                        let pinned = fd.pin(&pin).map_err(|e| BpfError::Interface {
                            ifindex,
                            reason: format!("pinning link at {}: {e}", pin.display()),
                        })?;
                        Ok(Attachment::Tcx(pinned))
                    }
                    None => Ok(Attachment::TcxOwned(fd)),
                }
            }
            Err(tcx_err) => {
                // Kernels before 6.6 have no TCX: fall back to a clsact qdisc filter.
                debug!(ifindex, "TCX attach failed ({tcx_err}); trying clsact");
                if let Err(e) = aya::programs::tc::qdisc_add_clsact(ifname) {
                    debug!(ifindex, "clsact: {e}");
                }
                let p = self.program(prog)?;
                let id = p
                    .attach_with_options(
                        ifname,
                        prog.hook(),
                        TcAttachOptions::Netlink(Default::default()),
                    )
                    .map_err(|e| BpfError::Interface {
                        ifindex,
                        reason: format!(
                            "attach {} failed with TCX ({tcx_err}) and clsact ({e})",
                            prog.name()
                        ),
                    })?;
                Ok(Attachment::Netlink(p.take_link(id).map_err(perr)?))
            }
        }
    }

    /// Node interfaces this process has attached `to_network` to.
    pub fn host_attached(&self) -> Vec<u32> {
        self.host_attached.keys().copied().collect()
    }

    /// Attaches `to_network` to one of the node's own interfaces (idempotent): flows that local
    /// endpoints send to Service addresses are judged there once translated.
    pub fn attach_host(&mut self, ifindex: u32) -> Result<()> {
        if self.host_attached.contains_key(&ifindex) {
            return Ok(());
        }
        let name = ifname(ifindex)?;
        let prog = if has_link_header(&name) {
            Prog::ToNetwork
        } else {
            Prog::ToNetworkL3
        };
        let a = self.attach_one(ifindex, &name, prog)?;
        self.host_attached.insert(ifindex, vec![a]);
        Ok(())
    }

    /// Detaches `to_network` from `ifindex`.
    pub fn detach_host(&mut self, ifindex: u32) -> Result<()> {
        if let Some(links) = self.host_attached.remove(&ifindex) {
            for a in links {
                detach_attachment(a);
            }
        }
        Ok(())
    }

    /// Detaches both programs from `ifindex` and removes their pins.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        if let Some(links) = self.attached.remove(&ifindex) {
            for a in links {
                detach_attachment(a);
            }
        }
        Ok(())
    }

    /// Installs `new` as the next generation (see [`PhysState`]): prepare the other slot of
    /// every entry that changes, switch `Config::generation` (with `revision` and `flags`) in
    /// one write, then clean up. A failure before the switch undoes what was written, so the
    /// maps hold exactly the previous state and it keeps enforcing; a failure while cleaning up
    /// leaves the new state in force and is reported in the returned summary (the next install
    /// finishes the job, since it starts from what the maps really hold).
    pub fn install(&mut self, new: &MapState, revision: u32, flags: u32) -> Result<Installed> {
        let t = self.phys.transition(new);
        let before = self.phys.clone();
        for (i, w) in t.prepare.iter().enumerate() {
            if let Err(source) = self.write_phys(w) {
                let undone = self.undo(&before, &t.prepare[..i]);
                return Err(match undone {
                    Ok(undone) => BpfError::Install {
                        write: describe(w),
                        undone,
                        error: AyaError::of(&source),
                    },
                    Err(rollback) => BpfError::Rollback {
                        write: describe(w),
                        rollback,
                        error: AyaError::of(&source),
                    },
                });
            }
            self.phys.apply(w);
        }
        // The generation is the revision's lowest bit (see `Config`): the flip is the one write
        // of a revision of the new generation's parity, at or above the one asked for.
        let revision = if revision & 1 == u32::from(t.flip_to) {
            revision
        } else {
            revision.wrapping_add(1)
        };
        let config = Config {
            revision,
            flags,
            endpoint_mark_shift: self.endpoint_mark_shift,
            event_rate_milli: self.event_limits.0,
            event_burst: self.event_limits.1,
            drop_report_window_ms: self.drop_report_window_ms,
        };
        if let Err(e) = self.set_config(config) {
            let undone = self.undo(&before, &t.prepare);
            return Err(match (e, undone) {
                (BpfError::Map { error, .. }, Ok(undone)) => BpfError::Install {
                    write: format!("{} generation {}", names::MAP_CONFIG, t.flip_to),
                    undone,
                    error,
                },
                (e, _) => e,
            });
        }
        self.phys.apply(&PhysWrite::Flip(t.flip_to));
        if !t.cleanup.is_empty() {
            // A packet that read the old generation just before the switch may still be on its
            // way through the program (microseconds, in softirq); clean-up rewrites the old
            // slots, so let it finish first.
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut cleanup_errors = Vec::new();
        for w in &t.cleanup {
            match self.write_phys(w) {
                Ok(()) => self.phys.apply(w),
                Err(e) => cleanup_errors.push(format!("{}: {e}", describe(w))),
            }
        }
        Ok(Installed {
            writes: t.len(),
            revision,
            cleanup_errors,
        })
    }

    /// Restores, newest first, what `before` held for the keys of `done`.
    fn undo(
        &mut self,
        before: &PhysState,
        done: &[PhysWrite],
    ) -> std::result::Result<usize, String> {
        for w in done.iter().rev() {
            let Some(restore) = before.restoring(w) else {
                continue;
            };
            self.write_phys(&restore)
                .map_err(|e| format!("undoing {}: {e}", describe(w)))?;
            self.phys.apply(&restore);
        }
        Ok(done.len())
    }

    fn write_phys(&mut self, w: &PhysWrite) -> std::result::Result<(), MapError> {
        use names::*;
        match *w {
            PhysWrite::PolicyUpsert(k, v) => self.lpm_write(policy_map(k.data.tier), k, Some(v)),
            PhysWrite::PolicyDelete(k) => {
                self.lpm_write::<_, PolicyValue>(policy_map(k.data.tier), k, None)
            }
            PhysWrite::EndpointUpsert(k, v) => self.hash_write(MAP_ENDPOINTS, k, Some(v)),
            PhysWrite::EndpointDelete(k) => {
                self.hash_write::<_, EndpointValue>(MAP_ENDPOINTS, k, None)
            }
            PhysWrite::IpUpsert(k, v) => self.hash_write(MAP_IP_IDENTITY, k, Some(v)),
            PhysWrite::IpDelete(k) => self.hash_write::<_, IdentitySlots>(MAP_IP_IDENTITY, k, None),
            PhysWrite::CidrUpsert(k, v) => self.lpm_write(MAP_CIDR_IDENTITY, k, Some(v)),
            PhysWrite::CidrDelete(k) => {
                self.lpm_write::<_, IdentitySlots>(MAP_CIDR_IDENTITY, k, None)
            }
            PhysWrite::ServiceUpsert(k, v) => self.hash_write(MAP_SERVICE_IPS, k, Some(v)),
            PhysWrite::ServiceDelete(k) => self.hash_write::<_, u32>(MAP_SERVICE_IPS, k, None),
            PhysWrite::BackendUpsert(k, v) => self.hash_write(MAP_SERVICE_BACKENDS, k, Some(v)),
            PhysWrite::BackendDelete(k) => self.hash_write::<_, u32>(MAP_SERVICE_BACKENDS, k, None),
            PhysWrite::Flip(_) => Ok(()),
        }
    }

    /// Upserts (`Some`) or deletes (`None`, absent keys included) one hash map entry.
    fn hash_write<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        k: K,
        v: Option<V>,
    ) -> std::result::Result<(), MapError> {
        let mut m = self.typed::<BpfHashMap<_, K, V>>(name)?;
        match v {
            Some(v) => m.insert(k, v, 0),
            None => ignore_missing(m.remove(&k)),
        }
    }

    /// Upserts (`Some`) or deletes (`None`, absent keys included) one LPM trie entry.
    fn lpm_write<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        k: Lpm<K>,
        v: Option<V>,
    ) -> std::result::Result<(), MapError> {
        let mut m = self.typed::<LpmTrie<_, K, V>>(name)?;
        match v {
            Some(v) => m.insert(&lpm(&k), v, 0),
            None => ignore_missing(m.remove(&lpm(&k))),
        }
    }

    /// A map of the object, typed (`BpfHashMap`, `LpmTrie`, ... over `&mut MapData`).
    fn typed<'a, T>(&'a mut self, name: &'static str) -> std::result::Result<T, MapError>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        T::try_from(self.ebpf.map_mut(name).ok_or_else(missing)?)
    }

    /// Writes the datapath's configuration.
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        let mut a: Array<&mut MapData, Config> = Array::try_from(self.map_mut(names::MAP_CONFIG)?)
            .map_err(map_err(names::MAP_CONFIG))?;
        a.set(0, config, 0).map_err(map_err(names::MAP_CONFIG))
    }

    /// Makes the `NAMES` map hold exactly `names` (what the agent's ids stand for), writing only
    /// what changed. Best effort: names serve readers, not the verdicts.
    pub fn set_names(&mut self, names: &BTreeMap<NameKey, String>) -> Result<()> {
        let current: BTreeMap<NameKey, String> = self.names()?;
        let mut m = self
            .typed::<BpfHashMap<_, NameKey, NameValue>>(names::MAP_NAMES)
            .map_err(map_err(names::MAP_NAMES))?;
        for (k, v) in names {
            if current.get(k) != Some(v) {
                m.insert(k, NameValue::new(v), 0)
                    .map_err(map_err(names::MAP_NAMES))?;
            }
        }
        for k in current.keys() {
            if !names.contains_key(k) {
                ignore_missing(m.remove(k)).map_err(map_err(names::MAP_NAMES))?;
            }
        }
        Ok(())
    }

    /// What the `NAMES` map holds.
    pub fn names(&self) -> Result<BTreeMap<NameKey, String>> {
        read_names(self.map(names::MAP_NAMES)?)
    }

    /// Limits the events each endpoint emits: `rate_milli` thousandths of an event per second
    /// after a `burst` (0: no limit). Held-back events are counted (`counter::EVENTS_SUPPRESSED`,
    /// and per endpoint in `EVENT_BUCKETS`); verdicts are unaffected.
    pub fn set_event_limits(&mut self, rate_milli: u32, burst: u32) -> Result<()> {
        self.event_limits = (rate_milli, burst);
        let mut c = self.config()?;
        c.event_rate_milli = rate_milli;
        c.event_burst = burst;
        self.set_config(c)
    }

    /// How long a Service deferral waits for its translated packet, and how many an endpoint
    /// may have outstanding (see `ServiceConfig`; 0: the default).
    pub fn set_service_deferral(&mut self, lifetime: Duration, budget: u32) -> Result<()> {
        let n = names::MAP_SERVICE_CONFIG;
        let mut a: Array<&mut MapData, ServiceConfig> =
            Array::try_from(self.map_mut(n)?).map_err(map_err(n))?;
        let c = ServiceConfig {
            defer_ms: lifetime.as_millis().min(u32::MAX as u128) as u32,
            budget,
        };
        a.set(0, c, 0).map_err(map_err(n))
    }

    /// Reports a flow's drops once per `window` (zero: every drop).
    pub fn set_drop_report_window(&mut self, window: Duration) -> Result<()> {
        self.drop_report_window_ms = window.as_millis().min(u32::MAX as u128) as u32;
        let mut c = self.config()?;
        c.drop_report_window_ms = self.drop_report_window_ms;
        self.set_config(c)
    }

    /// Where `from_endpoint` writes the endpoint mark in `skb->mark` (see
    /// `enforcer_common::endpoint_mark`): its lowest bit, or `None` for no mark (then a pod's own
    /// packet back through a Service is judged as the node's).
    pub fn set_endpoint_mark(&mut self, shift: Option<u32>) -> Result<()> {
        self.endpoint_mark_shift = shift.unwrap_or(0);
        let mut c = self.config()?;
        c.endpoint_mark_shift = self.endpoint_mark_shift;
        self.set_config(c)
    }

    /// Makes `EVENT_LIMITS` hold exactly `limits` (ifindex → limit from policy annotations).
    pub fn set_endpoint_event_limits(&mut self, limits: &BTreeMap<u32, EventLimit>) -> Result<()> {
        let n = names::MAP_EVENT_LIMITS;
        let current: Vec<(u32, EventLimit)> = hash_entries(self.map(n)?, n)?;
        let mut m: BpfHashMap<&mut MapData, u32, EventLimit> =
            BpfHashMap::try_from(self.map_mut(n)?).map_err(map_err(n))?;
        for (k, _) in &current {
            if !limits.contains_key(k) {
                ignore_missing(m.remove(k)).map_err(map_err(n))?;
            }
        }
        for (k, v) in limits {
            if current.iter().all(|(ck, cv)| ck != k || cv != v) {
                m.insert(k, v, 0).map_err(map_err(n))?;
            }
        }
        Ok(())
    }

    /// Packets and bytes per admitting rule, summed over CPUs.
    pub fn rule_counters(&self) -> Result<BTreeMap<RuleCounterKey, RuleCounter>> {
        rule_counters(self.map(names::MAP_RULE_COUNTERS)?)
    }

    /// Drops the counters of policies that no longer exist (their ids may be reused).
    pub fn prune_rule_counters(&mut self, live: impl Fn(u32) -> bool) -> Result<()> {
        let n = names::MAP_RULE_COUNTERS;
        let dead: Vec<RuleCounterKey> = self
            .rule_counters()?
            .into_keys()
            .filter(|k| !live(k.policy_id))
            .collect();
        let mut m: PerCpuHashMap<&mut MapData, RuleCounterKey, RuleCounter> =
            PerCpuHashMap::try_from(self.map_mut(n)?).map_err(map_err(n))?;
        for k in dead {
            ignore_missing(m.remove(&k)).map_err(map_err(n))?;
        }
        Ok(())
    }

    /// Events held back by the rate limit, per endpoint interface.
    pub fn suppressed_events(&self) -> Result<Vec<(u32, u64)>> {
        let buckets: Vec<(u32, EventBucket)> = hash_entries(
            self.map(names::MAP_EVENT_BUCKETS)?,
            names::MAP_EVENT_BUCKETS,
        )?;
        Ok(buckets
            .into_iter()
            .map(|(k, v)| (k, v.suppressed))
            .collect())
    }

    /// The datapath's configuration as the maps hold it.
    pub fn config(&self) -> Result<Config> {
        let a: Array<&MapData, Config> =
            Array::try_from(self.map(names::MAP_CONFIG)?).map_err(map_err(names::MAP_CONFIG))?;
        a.get(&0, 0).map_err(map_err(names::MAP_CONFIG))
    }

    /// Number of conntrack entries, both tables (a walk: tests and dumps).
    pub fn conntrack_len(&self) -> Result<usize> {
        Ok(self.conntrack()?.len())
    }

    /// Conntrack entries, both tables: `CT_ESTABLISHED`'s, then the LRU's (tests, dumps).
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>> {
        let t = self.ct_tables()?;
        let mut v = t.entries(ct::Table::Established)?;
        v.extend(t.entries(ct::Table::Lru)?);
        Ok(v)
    }

    /// Empties conntrack and its accounting (tests and benchmarks that need the next packet
    /// to be a new flow).
    pub fn clear_conntrack(&mut self) -> Result<()> {
        let mut t = self.ct_tables()?;
        for table in [ct::Table::Established, ct::Table::Lru] {
            for (k, _) in t.entries(table)? {
                t.delete(table, &k)?;
            }
        }
        let (used, freed) = t.accounting()?;
        for ifindex in used.keys().chain(freed.keys()) {
            t.forget(*ifindex)?;
        }
        Ok(())
    }

    /// Verdict counters by `reason::*`, plus the datapath's own counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>> {
        counters(self.map(names::MAP_DROP_COUNTERS)?)
    }

    /// Events waiting in the ring buffer, without blocking (tests).
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if let Some(rb) = self.events.as_mut() {
            while let Some(item) = rb.next() {
                if let Some(e) = parse_event(&item) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// Moves the ring buffer to a task that forwards every event to `tx`.
    pub fn spawn_event_reader(&mut self, tx: mpsc::Sender<Event>) -> anyhow::Result<()> {
        let rb = self
            .events
            .take()
            .ok_or_else(|| anyhow::anyhow!("the event reader is already running"))?;
        // SAFETY: the ring buffer owns its fd, and the AsyncFd owns the ring buffer until the
        // task ends, so the fd stays open for as long as it is registered.
        let mut fd = unsafe { AsyncFd::register_with_interest(rb, tokio::io::Interest::READABLE) }
            .map_err(|e| {
                anyhow::anyhow!("registering the event ring buffer: {}", e.into_parts().1)
            })?;
        tokio::spawn(async move {
            loop {
                let mut guard = match fd.readable_mut().await {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("event ring buffer: {e}");
                        return;
                    }
                };
                let rb = guard.get_inner_mut();
                let mut batch = Vec::new();
                while let Some(item) = rb.next() {
                    if let Some(e) = parse_event(&item) {
                        batch.push(e);
                    }
                }
                guard.clear_ready();
                for e in batch {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(())
    }

    /// Runs a program once per `repeat` over `packet` with `BPF_PROG_TEST_RUN`. The packet enters
    /// with ifindex 1 (loopback), so tests key their endpoint on ifindex 1, and as if the node
    /// sent it (no ingress interface).
    pub fn test_run(&mut self, prog: Prog, packet: &[u8], repeat: u32) -> Result<RunResult> {
        self.test_run_skb(prog, packet, repeat, &TestSkb::default())
    }

    /// [`Datapath::test_run`] on the interface `ifindex` of the calling thread's network
    /// namespace.
    pub fn test_run_at(
        &mut self,
        prog: Prog,
        packet: &[u8],
        repeat: u32,
        ifindex: u32,
    ) -> Result<RunResult> {
        self.run_with(prog, packet, repeat, &TestSkb::default(), ifindex)
    }

    /// [`Datapath::test_run`] with the skb fields the kernel lets a test set (see [`TestSkb`]).
    pub fn test_run_skb(
        &mut self,
        prog: Prog,
        packet: &[u8],
        repeat: u32,
        skb: &TestSkb,
    ) -> Result<RunResult> {
        self.run_with(prog, packet, repeat, skb, 1)
    }

    fn run_with(
        &mut self,
        prog: Prog,
        packet: &[u8],
        repeat: u32,
        skb: &TestSkb,
        ifindex: u32,
    ) -> Result<RunResult> {
        let ctx = skb.to_ctx(ifindex);
        let p = self.program(prog)?;
        let mut out = vec![0u8; packet.len() + 256];
        let mut ctx_out = [0u8; 192];
        let with_ctx = *skb != TestSkb::default() || ifindex > 1;
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: with_ctx.then_some(&ctx[..]),
            ctx_out: with_ctx.then_some(&mut ctx_out[..]),
            repeat: repeat.max(1),
            ..Default::default()
        };
        let r = p.test_run(opts).map_err(|source| BpfError::Program {
            name: prog.name(),
            error: AyaError::of(&source),
        })?;
        Ok(RunResult {
            verdict: r.return_value as i32,
            duration: r.duration,
            mark: u32::from_ne_bytes(ctx_out[8..12].try_into().unwrap_or_default()),
        })
    }

    /// The outstanding Service deferrals (`PENDING`).
    pub fn pending(&self) -> Result<Vec<(PendingKey, PendingValue)>> {
        let n = names::MAP_PENDING;
        let m: BpfHashMap<&MapData, PendingKey, PendingValue> =
            BpfHashMap::try_from(self.map(n)?).map_err(map_err(n))?;
        m.iter().map(|r| r.map_err(map_err(n))).collect()
    }

    /// Detaches from every interface and removes the pins, or, with `keep_pins`, leaves programs
    /// attached and maps pinned for the next agent.
    pub fn cleanup(mut self, keep_pins: bool) -> Result<()> {
        let mut attached = std::mem::take(&mut self.attached);
        attached.extend(std::mem::take(&mut self.host_attached));
        for (_, links) in attached {
            for a in links {
                if keep_pins {
                    match a {
                        // The pin holds the link; closing our fd leaves it attached.
                        Attachment::Tcx(p) => drop(p),
                        Attachment::TcxOwned(fd) => drop(fd),
                        // Dropping a netlink attachment would remove the filter.
                        Attachment::Netlink(l) => std::mem::forget(l),
                    }
                } else {
                    detach_attachment(a);
                }
            }
        }
        if !keep_pins && let Some(bpffs) = &self.bpffs {
            remove_pins(bpffs)?;
        }
        Ok(())
    }
}

fn detach_attachment(a: Attachment) {
    match a {
        Attachment::Tcx(p) => match p.unpin() {
            Ok(fd) => drop(fd),
            Err(e) => warn!("unpinning a link: {e}"),
        },
        Attachment::TcxOwned(fd) => drop(fd),
        Attachment::Netlink(l) => {
            use aya::programs::links::Link as _;
            if let Err(e) = l.detach() {
                warn!("detaching a clsact filter: {e}");
            }
        }
    }
}

/// Removes every pin under `bpffs` that an agent made (maps and links), then the folder if empty.
pub fn remove_pins(bpffs: &Path) -> Result<()> {
    let rm = |p: &Path| match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(BpfError::Pin {
            what: "removing a pin".into(),
            path: p.to_path_buf(),
            error,
        }),
    };
    for n in names::ALL_MAPS {
        rm(&bpffs.join(n))?;
    }
    if let Ok(entries) = std::fs::read_dir(bpffs.join("links")) {
        for e in entries.flatten() {
            rm(&e.path())?;
        }
    }
    let _ = std::fs::remove_dir(bpffs.join("links"));
    let _ = std::fs::remove_dir(bpffs);
    Ok(())
}

fn missing() -> MapError {
    MapError::InvalidName {
        name: "map missing from the object".into(),
    }
}

fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn lpm<K: Pod>(k: &Lpm<K>) -> Key<K> {
    Key::new(k.prefix_len, k.data)
}

fn describe(w: &PhysWrite) -> String {
    match w {
        PhysWrite::PolicyUpsert(k, _) => {
            let map = names::policy_map(k.data.tier);
            format!("{map} upsert {:?}/{}", k.data, k.prefix_len)
        }
        PhysWrite::PolicyDelete(k) => {
            let map = names::policy_map(k.data.tier);
            format!("{map} delete {:?}/{}", k.data, k.prefix_len)
        }
        PhysWrite::EndpointUpsert(k, _) => format!("{} upsert ifindex {k}", names::MAP_ENDPOINTS),
        PhysWrite::EndpointDelete(k) => format!("{} delete ifindex {k}", names::MAP_ENDPOINTS),
        PhysWrite::IpUpsert(k, _) => format!("{} upsert {}", names::MAP_IP_IDENTITY, show_addr(k)),
        PhysWrite::IpDelete(k) => format!("{} delete {}", names::MAP_IP_IDENTITY, show_addr(k)),
        PhysWrite::CidrUpsert(k, _) => format!(
            "{} upsert {}/{}",
            names::MAP_CIDR_IDENTITY,
            show_addr(&k.data),
            k.prefix_len
        ),
        PhysWrite::CidrDelete(k) => format!(
            "{} delete {}/{}",
            names::MAP_CIDR_IDENTITY,
            show_addr(&k.data),
            k.prefix_len
        ),
        PhysWrite::ServiceUpsert(k, _) => {
            format!("{} upsert {}", names::MAP_SERVICE_IPS, show_addr(k))
        }
        PhysWrite::ServiceDelete(k) => {
            format!("{} delete {}", names::MAP_SERVICE_IPS, show_addr(k))
        }
        PhysWrite::BackendUpsert(k, _) => {
            format!("{} upsert {}", names::MAP_SERVICE_BACKENDS, show_backend(k))
        }
        PhysWrite::BackendDelete(k) => {
            format!("{} delete {}", names::MAP_SERVICE_BACKENDS, show_backend(k))
        }
        PhysWrite::Flip(g) => format!("{} generation {g}", names::MAP_CONFIG),
    }
}

/// An address key as text (IPv4-mapped shown as IPv4).
pub fn show_addr(k: &IpAddrKey) -> String {
    let v6 = std::net::Ipv6Addr::from(k.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

fn parse_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain integers; the length is checked; read_unaligned copes with any
    // alignment of the ring buffer record.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
}

fn ifname(ifindex: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(BpfError::Interface {
            ifindex,
            reason: format!("no such interface ({})", std::io::Error::last_os_error()),
        });
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

fn read_names(m: &Map) -> Result<BTreeMap<NameKey, String>> {
    let entries: Vec<(NameKey, NameValue)> = hash_entries(m, names::MAP_NAMES)?;
    Ok(entries
        .into_iter()
        .map(|(k, v)| (k, v.as_str().to_string()))
        .collect())
}

/// Every entry of a hash (or LRU hash) map.
fn hash_entries<K: Pod, V: Pod>(m: &Map, name: &'static str) -> Result<Vec<(K, V)>> {
    let m: BpfHashMap<&MapData, K, V> = BpfHashMap::try_from(m).map_err(map_err(name))?;
    m.iter().map(|r| r.map_err(map_err(name))).collect()
}

/// Every entry of an LPM trie, with its prefix length.
fn lpm_entries<K: Pod, V: Pod>(m: &Map, name: &'static str) -> Result<Vec<(Lpm<K>, V)>> {
    let m: LpmTrie<&MapData, K, V> = LpmTrie::try_from(m).map_err(map_err(name))?;
    m.iter()
        .map(|r| {
            r.map(|(k, v)| {
                (
                    Lpm {
                        prefix_len: k.prefix_len(),
                        data: k.data(),
                    },
                    v,
                )
            })
            .map_err(map_err(name))
        })
        .collect()
}

fn read_phys<'a>(map: impl Fn(&'static str) -> Result<&'a Map>) -> Result<PhysState> {
    use names::*;
    let c: Array<&MapData, Config> =
        Array::try_from(map(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
    Ok(PhysState {
        generation: c.get(&0, 0).map_err(map_err(MAP_CONFIG))?.generation() as u8,
        endpoints: hash_entries(map(MAP_ENDPOINTS)?, MAP_ENDPOINTS)?
            .into_iter()
            .collect(),
        ip_identity: hash_entries(map(MAP_IP_IDENTITY)?, MAP_IP_IDENTITY)?
            .into_iter()
            .collect(),
        cidr_identity: lpm_entries(map(MAP_CIDR_IDENTITY)?, MAP_CIDR_IDENTITY)?
            .into_iter()
            .collect(),
        policy: lpm_entries(map(MAP_POLICY)?, MAP_POLICY)?
            .into_iter()
            .chain(lpm_entries(map(MAP_POLICY_TIERS)?, MAP_POLICY_TIERS)?)
            .collect(),
        service_ips: hash_entries(map(MAP_SERVICE_IPS)?, MAP_SERVICE_IPS)?
            .into_iter()
            .collect(),
        service_backends: hash_entries(map(MAP_SERVICE_BACKENDS)?, MAP_SERVICE_BACKENDS)?
            .into_iter()
            .collect(),
    })
}

fn counters(m: &Map) -> Result<Vec<u64>> {
    let a: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(m).map_err(map_err(names::MAP_DROP_COUNTERS))?;
    (0..counter::LEN)
        .map(|i| {
            a.get(&i, 0)
                .map(|v| v.iter().sum())
                .map_err(map_err(names::MAP_DROP_COUNTERS))
        })
        .collect()
}

/// Removes the pins of maps whose layout (type, key, value, an array's length) is not this object's, so the
/// loader creates them anew rather than handing the programs a map they cannot use: an upgrade
/// that changes a map replaces its pin (the old map lives on, for the old programs, until the
/// links are swapped). Maps whose layout is unchanged keep their pins and their entries.
fn replace_incompatible_pins(paths: &[(&'static str, PathBuf)]) {
    let obj = match aya_obj::Object::parse(OBJECT) {
        Ok(o) => o,
        Err(e) => {
            warn!("reading the map definitions of the eBPF object: {e}");
            return;
        }
    };
    for (name, path) in paths {
        let Some(want) = obj.maps.get(*name) else {
            continue;
        };
        let Ok(pinned) = MapData::from_pin(path) else {
            continue;
        };
        let Ok(info) = pinned.info() else {
            continue;
        };
        // A hash or trie of another capacity still works (the agent plans with the pinned
        // capacity, so entries and the maps' room agree); an array of another length does
        // not (the datapath indexes slots the old array lacks), nor another key or value size.
        let indexed = matches!(info.map_type(), Ok(MapType::Array | MapType::PerCpuArray));
        let same = info.map_type().ok().map(|t| t as u32) == Some(want.map_type())
            && info.key_size() == want.key_size()
            && info.value_size() == want.value_size()
            && (!indexed || info.max_entries() == want.max_entries());
        if same && *name == names::MAP_POLICY && holds_ordered_tiers(pinned) {
            // Before `POLICY_TIERS` existed the ordered tiers lived in `POLICY`: this version's
            // programs would not find them there, and the old programs still read them until
            // their links are swapped, so the pin is replaced rather than swept.
            warn!(
                map = name,
                "the pinned map holds ordered-tier entries, which this version keeps in {}: \
                 replacing the pin",
                names::MAP_POLICY_TIERS
            );
            let _ = std::fs::remove_file(path);
            continue;
        }
        if !same {
            warn!(
                map = name,
                "the pinned map's layout (key {} B, value {} B, {} entries) is not this version's \
                 (key {} B, value {} B, {} entries): replacing the pin",
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                want.key_size(),
                want.value_size(),
                want.max_entries()
            );
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether a pinned `POLICY` holds any entry of an ordered tier (stops at the first).
fn holds_ordered_tiers(pinned: MapData) -> bool {
    let Ok(m) = Map::from_map_data(pinned) else {
        return false;
    };
    let Ok(trie) = LpmTrie::<&MapData, enforcer_common::PolicyKey, PolicyValue>::try_from(&m)
    else {
        return false;
    };
    trie.keys()
        .any(|k| k.is_ok_and(|k| enforcer_common::tier::ordered(k.data().tier)))
}

fn rule_counters(m: &Map) -> Result<BTreeMap<RuleCounterKey, RuleCounter>> {
    let n = names::MAP_RULE_COUNTERS;
    let h: PerCpuHashMap<&MapData, RuleCounterKey, RuleCounter> =
        PerCpuHashMap::try_from(m).map_err(map_err(n))?;
    let mut out = BTreeMap::new();
    for item in h.iter() {
        let (k, per_cpu) = item.map_err(map_err(n))?;
        let mut sum = RuleCounter::default();
        for c in per_cpu.iter() {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        out.insert(k, sum);
    }
    Ok(out)
}

/// The pinned maps of a running agent, opened read-only for `maps dump` and `explain --live`.
pub struct PinnedMaps {
    maps: std::collections::HashMap<&'static str, Map>,
}

impl PinnedMaps {
    pub fn open(bpffs: &Path) -> Result<Self> {
        let mut maps = std::collections::HashMap::new();
        for n in [
            names::MAP_ENDPOINTS,
            names::MAP_IP_IDENTITY,
            names::MAP_CIDR_IDENTITY,
            names::MAP_POLICY,
            names::MAP_POLICY_TIERS,
            names::MAP_CONNTRACK,
            names::MAP_CT_ESTABLISHED,
            names::MAP_CT_USED,
            names::MAP_CT_FREED,
            names::MAP_DROP_COUNTERS,
            names::MAP_SERVICE_IPS,
            names::MAP_SERVICE_BACKENDS,
            names::MAP_CONFIG,
            names::MAP_NAMES,
            names::MAP_RULE_COUNTERS,
        ] {
            let path = bpffs.join(n);
            let data = MapData::from_pin(&path).map_err(map_err(n))?;
            maps.insert(n, Map::from_map_data(data).map_err(map_err(n))?);
        }
        Ok(Self { maps })
    }

    fn map(&self, n: &'static str) -> Result<&Map> {
        self.maps.get(n).ok_or(BpfError::MissingMap(n))
    }

    pub fn read_state(&self) -> Result<MapState> {
        Ok(read_phys(|n| self.map(n))?.logical())
    }

    /// What the conntrack tables hold, and their counters (walks both tables).
    pub fn conntrack(&self) -> Result<ct::CtSummary> {
        ct::CtSummary::read(&ct::CtTables::open(|n| self.map(n))?)
    }

    /// Counters by `reason::*` (then the datapath's own), summed over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>> {
        counters(self.map(names::MAP_DROP_COUNTERS)?)
    }

    /// What the agent's ids stand for.
    pub fn names(&self) -> Result<BTreeMap<NameKey, String>> {
        read_names(self.map(names::MAP_NAMES)?)
    }

    /// Packets and bytes per admitting rule, summed over CPUs.
    pub fn rule_counters(&self) -> Result<BTreeMap<RuleCounterKey, RuleCounter>> {
        rule_counters(self.map(names::MAP_RULE_COUNTERS)?)
    }
}

fn show_backend(k: &ServiceBackendKey) -> String {
    format!(
        "{}:{}/{} -> {}:{}",
        show_addr(&IpAddrKey {
            addr: k.service_addr
        }),
        u16::from_be(k.service_port_be),
        k.proto,
        show_addr(&IpAddrKey {
            addr: k.backend_addr
        }),
        u16::from_be(k.backend_port_be)
    )
}

/// Does the interface put a link-layer header on its packets? Ethernet-like devices do
/// (`/sys/class/net/NAME/type` 1, loopback 772); L3 devices (IPIP's tunl0 768, WireGuard
/// 65534, GRE 778, SIT 776, ...) hand TC the bare IP packet. Unknown: assume Ethernet.
fn has_link_header(name: &str) -> bool {
    match std::fs::read_to_string(format!("/sys/class/net/{name}/type")) {
        Ok(t) => link_type_has_header(t.trim().parse().unwrap_or(1)),
        Err(_) => true,
    }
}

/// ARPHRD_* types without a link-layer header on TC.
pub fn link_type_has_header(arphrd: u32) -> bool {
    // ARPHRD_TUNNEL, TUNNEL6, SIT, IPGRE, IP6GRE, RAWIP, NONE; PPP.
    !matches!(arphrd, 768 | 769 | 776 | 778 | 823 | 519 | 65534 | 512)
}
