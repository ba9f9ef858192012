//! enforcer: a Kubernetes NetworkPolicy enforcer with an eBPF TC datapath.
//!
//! Layers (see docs/architecture.md):
//! - [`model`]: trimmed, validated cluster objects (the API's defaults applied on the way in);
//! - [`source`]: where objects come from (a folder of manifests) into the [`compiler::Cluster`]
//!   index;
//! - [`compiler`]: cluster → desired map state, placed under policy sets (pure);
//! - [`state`]: the desired map content and the minimal, ordered diff (pure);
//! - [`lookup`]: the datapath's decision evaluated over a map state (pure);
//! - [`reference`]: the spec read literally, to test the compiler against (pure);
//! - [`calico`]: Calico's own resources; so far its selector language (pure);
//! - [`bpf`]: the kernel edge: load, pin, attach, install diffs, read events;
//! - [`conntrack`]: the conntrack garbage collector (its own thread);
//! - [`discover`]: local pod interfaces and node addresses; [`binding`]: which interface is a
//!   pod's (pure), from the addresses its peer holds ([`peers`]);
//! - [`agent`]: `enforcer run`; [`dump`]: `enforcer maps dump`; [`explain`]: `enforcer explain`; [`describe`]: `enforcer describe pod`;
//!   [`events`]: `enforcer events`; [`logging`]: the agent's log (text or JSON); [`status`]:
//!   `enforcer status` and the agent's record.

/// The commit this binary was built from (`git rev-parse --short HEAD`, `-dirty` when tracked
/// files differed from it), or `unknown` when built outside a repository without
/// `ENFORCER_COMMIT`.
pub const COMMIT: &str = env!("ENFORCER_COMMIT");

/// The version and commit, as `--version` and `enforcer status` show them: `0.1.0 (1a2b3c4)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ENFORCER_COMMIT"),
    ")"
);

pub mod agent;
pub mod binding;
pub mod bpf;
pub mod calico;
pub mod cluster_policy;
pub mod compiler;
pub mod conntrack;
pub mod describe;
pub mod discover;
pub mod dump;
pub mod events;
pub mod explain;
pub mod held_kinds;
pub mod kube_source;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod peers;
pub mod reference;
pub mod services;
pub mod source;
pub mod state;
pub mod status;
