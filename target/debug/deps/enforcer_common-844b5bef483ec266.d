/work/main/target/debug/deps/enforcer_common-844b5bef483ec266.d: enforcer-common/src/lib.rs

/work/main/target/debug/deps/enforcer_common-844b5bef483ec266: enforcer-common/src/lib.rs

enforcer-common/src/lib.rs:
