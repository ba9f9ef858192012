//! The lab without the rest of the enforcer CLI, for working on the lab itself:
//! `cargo run -p enforcer-lab --example lab -- run FILE --agent-cmd enforcer-lab/tests/fake-agent.sh`.
//! The agent is `$ENFORCER_EXE` (default `target/release/enforcer`).

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: enforcer_lab::LabCommand,
}

fn main() {
    let cli = Cli::parse();
    let exe = std::env::var_os("ENFORCER_EXE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target/release/enforcer".into());
    std::process::exit(enforcer_lab::main(cli.cmd, &exe));
}
