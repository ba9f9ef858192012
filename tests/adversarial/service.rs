//! Adversarial tests: Service egress against unbound deferrals.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
