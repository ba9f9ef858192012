//! Calico's own resources (issue 15: HostEndpoints and GlobalNetworkPolicies).
//!
//! - [`selector`]: Calico's selector language, parsed and matched as libcalico-go does (pure).

pub mod selector;
