//! Adversarial tests: whole labs with pods that forge packets, on routed and bridge nodes.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
