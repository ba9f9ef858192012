//! The real Kubernetes control plane for tests and the lab: etcd and kube-apiserver, built from
//! source once per machine by `cargo xtask setup` (see [`pins`]), started in a network
//! namespace with TLS (a CA made for the run), RBAC and Node authorization, the usual
//! admission plugins and service-account tokens; an admin kubeconfig (client certificate in
//! `system:masters`) and kubeconfigs for ServiceAccount tokens. Everything it starts or makes
//! (processes, the temporary folder, a namespace of its own) is removed on drop, also when a
//! test fails half way.
//!
//! ```no_run
//! let cp = control_plane::ControlPlane::start(Default::default()).unwrap();
//! let out = cp.kubectl_ok(&["get", "namespaces", "-o", "name"]).unwrap();
//! assert!(out.contains("namespace/default"));
//! ```

pub mod pins;

#[cfg(feature = "harness")]
mod certs;
#[cfg(feature = "harness")]
mod harness;
#[cfg(feature = "harness")]
pub mod kubeconfig;
#[cfg(feature = "harness")]
mod sys;

#[cfg(feature = "harness")]
pub use harness::{API_PORT, Binaries, ControlPlane, Error, Options, Process};
#[cfg(feature = "harness")]
pub use sys::sweep_stale;
