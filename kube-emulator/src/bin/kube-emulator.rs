//! `kube-emulator --listen 127.0.0.1:0 [--kubeconfig PATH] [--history N]
//! [--bookmark-interval-ms MS]`: serves the emulated API until killed. Prints the bound
//! address on stdout (one line), after the kubeconfig is written.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: kube-emulator [--listen ADDR] [--kubeconfig PATH] [--history N] [--bookmark-interval-ms MS]
  --listen ADDR              address to serve on (default 127.0.0.1:0)
  --kubeconfig PATH          write a kubeconfig pointing at the server there
  --history N                events kept for watches and paginated lists (default 10000)
  --bookmark-interval-ms MS  how often watches get a BOOKMARK (default 1000)
Test controls: POST /emulator/drop_watches, /emulator/compact, /emulator/fail_next?n=1&code=500,
/emulator/bookmark_interval?ms=100; GET /emulator/stats.";

struct Args {
    listen: SocketAddr,
    kubeconfig: Option<PathBuf>,
    history: usize,
    bookmark: Option<Duration>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        kubeconfig: None,
        history: 10_000,
        bookmark: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = inline
            .or_else(|| it.next())
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                a.listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value:?}: {e}"))?
            }
            "--kubeconfig" => a.kubeconfig = Some(PathBuf::from(value)),
            "--history" => {
                a.history = value
                    .parse()
                    .map_err(|e| format!("--history {value:?}: {e}"))?
            }
            "--bookmark-interval-ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|e| format!("--bookmark-interval-ms {value:?}: {e}"))?;
                a.bookmark = Some(Duration::from_millis(ms));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kube-emulator: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-emulator: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let emu = kube_emulator::Emulator::with_history(args.history);
        if let Some(d) = args.bookmark {
            emu.set_bookmark_interval(d);
        }
        let addr = match emu.bind(args.listen).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("kube-emulator: binding {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        if let Some(path) = &args.kubeconfig
            && let Err(e) = kube_emulator::write_kubeconfig(path, addr)
        {
            eprintln!("kube-emulator: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{addr}");
        let _ = std::io::stdout().flush();
        std::future::pending::<ExitCode>().await
    })
}
