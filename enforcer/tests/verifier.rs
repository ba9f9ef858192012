//! The verifier's budget: every program loads, and each leaves headroom under the kernel's
//! limit of a million processed instructions. The endpoint programs run close to it (the count
//! moves by hundreds of thousands with code shape alone: docs/architecture.md, known limits),
//! so this fails at 95% of the limit, while the programs still load, to say it before a change
//! makes them stop loading. The counts are printed with `--nocapture`.
//!
//! Needs root (it loads the eBPF programs); README's test command runs it as root.
use enforcer::bpf::Datapath;

/// The kernel's limit (`BPF_COMPLEXITY_LIMIT_INSNS`).
const LIMIT: u32 = 1_000_000;

#[test]
fn every_program_leaves_verifier_headroom() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test loads eBPF programs and needs root; run it with README's test command"
    );
    let mut dp = Datapath::load_unpinned().expect("loading the datapath");
    let counts = dp
        .verified_instructions()
        .expect("reading the programs' info");
    assert_eq!(counts.len(), 4);
    for (name, n) in &counts {
        eprintln!(
            "{name}: {n} instructions verified ({:.1}% of the limit)",
            f64::from(*n) * 100.0 / f64::from(LIMIT)
        );
    }
    for (name, n) in counts {
        assert!(n > 0, "{name}: the kernel reported no count");
        assert!(
            n < LIMIT / 100 * 95,
            "{name}: {n} instructions verified, within 5% of the verifier's limit of {LIMIT}"
        );
    }
}
