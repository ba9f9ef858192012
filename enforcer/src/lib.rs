//! enforcer: a Kubernetes NetworkPolicy enforcer with an eBPF TC datapath.
//!
//! Layers (see docs/architecture.md):
//! - [`state`]: the desired map content and the minimal diff (pure);
//! - [`bpf`]: the kernel edge: load, pin, attach, install diffs, read events;

pub mod bpf;
pub mod state;
