//! Adversarial tests: the pod-to-interface binding against forged ARP/NDP and address theft.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
