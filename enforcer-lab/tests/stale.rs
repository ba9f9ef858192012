//! Leftovers of dead runs are removed. Its own test binary: every run removes stale runs as it
//! starts, which would race with the assertions here.

mod common;

use enforcer_lab::runs;

#[test]
fn stale_runs_are_removed() {
    need_root!();
    // A run whose owner is dead: a namespace and a folder naming a pid that has exited.
    let prefix = runs::new_prefix();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let dir = runs::run_dir(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("owner"), format!("{pid} 1\n")).unwrap();
    let ns = format!("{prefix}node-1");
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    // And a namespace of a run with no folder at all.
    let orphan = runs::new_prefix();
    let ns2 = format!("{orphan}x-a");
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &ns2])
            .status()
            .unwrap()
            .success()
    );

    let listed = runs::list();
    assert!(
        listed
            .iter()
            .any(|r| r.prefix == prefix && !r.alive && r.netns == vec![ns.clone()])
    );
    let (removed, problems) = runs::remove_stale();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        removed.contains(&prefix) && removed.contains(&orphan),
        "{removed:?}"
    );
    common::assert_clean(&prefix);
    common::assert_clean(&orphan);
}
