/work/main/target/debug/deps/enforcer_common-ab349d1cfec5c71c.d: enforcer-common/src/lib.rs

/work/main/target/debug/deps/libenforcer_common-ab349d1cfec5c71c.rlib: enforcer-common/src/lib.rs

/work/main/target/debug/deps/libenforcer_common-ab349d1cfec5c71c.rmeta: enforcer-common/src/lib.rs

enforcer-common/src/lib.rs:
