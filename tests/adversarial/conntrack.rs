//! Adversarial tests: conntrack against a flood of new flows.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
