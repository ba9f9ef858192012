//! Adversarial tests: forged packets against the loaded programs (BPF_PROG_TEST_RUN): spoofed sources, forged HOST, v4-mapped addresses, neighbour discovery, ICMP errors, fragments.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
