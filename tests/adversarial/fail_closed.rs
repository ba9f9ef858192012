//! Adversarial tests: fail-closed behaviour: held interfaces, full maps, restarts.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
