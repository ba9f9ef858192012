//! Starting and stopping etcd and kube-apiserver.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::certs;
use crate::kubeconfig::{self, User};
use crate::pins::{self, Component};
use crate::sys::{self, json_number, output, sh, tail, terminate, write};

/// The port kube-apiserver serves on.
pub const API_PORT: u16 = 6443;
/// etcd's client and peer ports, on the namespace's loopback.
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";
const ETCD_PEER: &str = "http://127.0.0.1:2380";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{binary} is not built (no {}): run `cargo xtask setup`, which builds the control \
         plane once per machine (or point {} at a folder holding it)",
        path.display(),
        pins::DIR_VAR
    )]
    NotBuilt { binary: &'static str, path: PathBuf },
    #[error(
        "cannot tell where the control plane's binaries are: set HOME, XDG_CACHE_HOME or {}",
        pins::DIR_VAR
    )]
    NoCacheDir,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("making the certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "{process} exited ({status}) before the API server was ready; the end of its log:\n{log}"
    )]
    Exited {
        process: &'static str,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error(
        "kube-apiserver was not ready within {waited:?} (last /readyz: {last}); the end of its \
         log:\n{log}"
    )]
    NotReady {
        waited: Duration,
        last: String,
        log: String,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The four binaries, found where `cargo xtask setup` builds them.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
}

impl Binaries {
    /// Finds every binary, or says which is missing and how to build it.
    pub fn locate() -> Result<Binaries, Error> {
        let find = |c: &Component, name: &'static str| {
            let path = c.path(name).ok_or(Error::NoCacheDir)?;
            if pins::is_executable(&path) {
                Ok(path)
            } else {
                Err(Error::NotBuilt { binary: name, path })
            }
        };
        Ok(Binaries {
            etcd: find(&pins::ETCD, "etcd")?,
            etcdctl: find(&pins::ETCD, "etcdctl")?,
            kube_apiserver: find(&pins::KUBERNETES, "kube-apiserver")?,
            kubectl: find(&pins::KUBERNETES, "kubectl")?,
        })
    }
}

/// Where and how the control plane runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// An existing network namespace (`/run/netns/NAME`) to run in, whose owner removes it; by
    /// default a namespace of its own, with only loopback, removed on drop.
    pub netns: Option<String>,
    /// The address kube-apiserver serves on and advertises (it must be in the namespace).
    pub address: IpAddr,
    /// `--service-cluster-ip-range`; the first address of the first range is the `kubernetes`
    /// Service's ClusterIP.
    pub service_cidrs: String,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
    /// More kube-apiserver flags, after the harness's own (a later one wins), e.g.
    /// `--watch-cache=false`: the watch cache keeps serving watches from revisions etcd has
    /// compacted, so only without it does a watch from one get 410 Gone at once.
    pub apiserver_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            netns: None,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            // The ranges the lab's scenarios take ClusterIPs from.
            service_cidrs: "10.96.0.0/16,fd00:96::/112".into(),
            ready_timeout: Duration::from_secs(180),
            apiserver_args: Vec::new(),
        }
    }
}

/// A process of the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    Etcd,
    ApiServer,
}

impl Process {
    /// Its binary's name, and its log's (`<name>.log`).
    pub fn name(self) -> &'static str {
        match self {
            Process::Etcd => "etcd",
            Process::ApiServer => "kube-apiserver",
        }
    }
}

/// A running etcd and kube-apiserver; stopped, and everything removed, on drop.
pub struct ControlPlane {
    binaries: Binaries,
    options: Options,
    dir: PathBuf,
    netns: String,
    own_netns: bool,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    started_in: Duration,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is ready (`/readyz`).
    pub fn start(options: Options) -> Result<ControlPlane, Error> {
        let t0 = Instant::now();
        let binaries = Binaries::locate()?;
        sys::sweep_stale();
        let id = format!(
            "{}{}-{}",
            sys::PREFIX,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        let own_netns = options.netns.is_none();
        let mut cp = ControlPlane {
            binaries,
            netns: options.netns.clone().unwrap_or(id),
            options,
            dir,
            own_netns: false,
            etcd: None,
            apiserver: None,
            started_in: Duration::ZERO,
        };
        // From here on, Drop removes whatever was made.
        fs::create_dir_all(&cp.dir).map_err(io(format!("creating {}", cp.dir.display())))?;
        if own_netns {
            sh(&["ip", "netns", "add", &cp.netns])?;
            cp.own_netns = true;
        }
        sh(&["ip", "-n", &cp.netns, "link", "set", "lo", "up"])?;
        cp.write_pki()?;
        let admin = kubeconfig::render(
            &cp.url(),
            &cp.dir.join("ca.crt"),
            "admin",
            &User::ClientCert {
                cert: &cp.dir.join("admin.crt"),
                key: &cp.dir.join("admin.key"),
            },
        );
        write(&cp.admin_kubeconfig(), &admin, 0o600)?;
        cp.start_etcd()?;
        cp.start_apiserver()?;
        cp.wait_ready()?;
        cp.started_in = t0.elapsed();
        Ok(cp)
    }

    /// `https://ADDRESS:6443`.
    pub fn url(&self) -> String {
        match self.options.address {
            IpAddr::V4(a) => format!("https://{a}:{API_PORT}"),
            IpAddr::V6(a) => format!("https://[{a}]:{API_PORT}"),
        }
    }

    /// The network namespace the processes run in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The folder of the certificates, kubeconfigs, logs and etcd's data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the serving certificate (kubeconfigs name it).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A kubeconfig for `admin` (group `system:masters`: every permission).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// From the call of `start` to `/readyz` answering ok.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// `kubectl --kubeconfig KUBECONFIG` in the control plane's namespace.
    pub fn kubectl_with(&self, kubeconfig: &Path) -> Command {
        let mut cmd = self.in_netns(&self.binaries.kubectl);
        // Its discovery cache is per server address (~/.kube/cache/discovery/127.0.0.1_6443):
        // one of its own, so no other control plane on that address answers for this one.
        cmd.env("KUBECACHEDIR", self.dir.join("kube-cache"))
            .arg("--kubeconfig")
            .arg(kubeconfig);
        cmd
    }

    /// `kubectl` as admin, in the control plane's namespace.
    pub fn kubectl(&self) -> Command {
        self.kubectl_with(&self.admin_kubeconfig())
    }

    /// Runs `kubectl ARGS` as admin; its stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, Error> {
        output(self.kubectl().args(args))
    }

    /// A kubeconfig authenticating with a fresh token (TokenRequest, valid 24 h) of the
    /// ServiceAccount `namespace/name`, written into the control plane's folder.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, Error> {
        let token =
            self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=24h"])?;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let text = kubeconfig::render(
            &self.url(),
            &self.ca_cert(),
            &user,
            &User::Token(token.trim()),
        );
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        write(&path, &text, 0o600)?;
        Ok(path)
    }

    /// The last lines of a process's log (`etcd` or `kube-apiserver`).
    pub fn log_tail(&self, process: &str, lines: usize) -> String {
        tail(&self.dir.join(format!("{process}.log")), lines)
    }

    /// The pid of a running process.
    pub fn pid(&self, process: Process) -> Option<u32> {
        match process {
            Process::Etcd => self.etcd.as_ref(),
            Process::ApiServer => self.apiserver.as_ref(),
        }
        .map(Child::id)
    }

    /// Stops a process as an upgrade or a node drain would: SIGTERM, then SIGKILL after 10 s.
    /// etcd keeps its data; the API server's clients see their connections close.
    pub fn stop(&mut self, process: Process) {
        let slot = match process {
            Process::Etcd => &mut self.etcd,
            Process::ApiServer => &mut self.apiserver,
        };
        if let Some(mut child) = slot.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// Starts a stopped process again (same data, certificates and address) and waits until
    /// the API server is ready.
    pub fn start_again(&mut self, process: Process) -> Result<(), Error> {
        match process {
            Process::Etcd if self.etcd.is_none() => self.start_etcd()?,
            Process::ApiServer if self.apiserver.is_none() => self.start_apiserver()?,
            _ => {}
        }
        self.wait_ready()
    }

    /// `stop`, then `start_again`.
    pub fn restart(&mut self, process: Process) -> Result<(), Error> {
        self.stop(process);
        self.start_again(process)
    }

    /// `etcdctl --endpoints=http://127.0.0.1:2379` in the control plane's namespace.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = self.in_netns(&self.binaries.etcdctl);
        cmd.arg(format!("--endpoints={ETCD_CLIENT}"));
        cmd
    }

    /// Compacts etcd's history up to its current revision, as kube-apiserver does every five
    /// minutes; returns that revision. Older revisions are gone: a watch or list from one of
    /// them gets 410 Gone once the API server's watch cache no longer holds it.
    pub fn compact(&self) -> Result<u64, Error> {
        let status = output(self.etcdctl().args(["endpoint", "status", "-w", "json"]))?;
        let revision = json_number(&status, "revision").ok_or_else(|| Error::Command {
            command: "etcdctl endpoint status -w json".into(),
            status: std::process::ExitStatus::default(),
            stderr: format!("no revision in its answer: {status}"),
        })?;
        output(self.etcdctl().args(["compact", &revision.to_string()]))?;
        Ok(revision)
    }

    /// `nsenter --net=/run/netns/NS PROGRAM` (nsenter execs it: its pid is the program's).
    fn in_netns(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    fn write_pki(&self) -> Result<(), Error> {
        let mut addresses = vec![self.options.address, IpAddr::V4(Ipv4Addr::LOCALHOST)];
        addresses.extend(first_service_ip(&self.options.service_cidrs));
        let pki = certs::generate(&addresses)?;
        for (file, text, mode) in [
            ("ca.crt", &pki.ca_cert, 0o644),
            ("apiserver.crt", &pki.serving_cert, 0o644),
            ("apiserver.key", &pki.serving_key, 0o600),
            ("admin.crt", &pki.admin_cert, 0o644),
            ("admin.key", &pki.admin_key, 0o600),
            ("sa.key", &pki.service_account_key, 0o600),
            ("sa.pub", &pki.service_account_pub, 0o644),
        ] {
            write(&self.dir.join(file), text, mode)?;
        }
        Ok(())
    }

    fn spawn(&self, program: &Path, args: &[String], log: &str) -> Result<Child, Error> {
        let log_path = self.dir.join(format!("{log}.log"));
        // Appended to: a restarted process's log follows its earlier run's.
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let err_file = log_file
            .try_clone()
            .map_err(io(format!("opening {}", log_path.display())))?;
        let mut cmd = self.in_netns(program);
        cmd.args(args).stdout(log_file).stderr(err_file);
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Its own process group: a Ctrl-C at the terminal reaches the owner, which
                // stops it in order; and it dies with the thread that started it should that
                // be killed (the signal survives nsenter's exec). Start and drop a control
                // plane on one thread.
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(io(format!("starting {}", program.display())))
    }

    fn start_etcd(&mut self) -> Result<(), Error> {
        let d = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        let args = [
            format!("--data-dir={}", d("etcd")),
            format!("--listen-client-urls={ETCD_CLIENT}"),
            format!("--advertise-client-urls={ETCD_CLIENT}"),
            format!("--listen-peer-urls={ETCD_PEER}"),
            format!("--initial-advertise-peer-urls={ETCD_PEER}"),
            format!("--initial-cluster=default={ETCD_PEER}"),
            // A throwaway store: losing it on a crash costs nothing, fsync costs seconds on a
            // loaded machine.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        self.etcd = Some(self.spawn(&self.binaries.etcd, &args, "etcd")?);
        Ok(())
    }

    fn start_apiserver(&mut self) -> Result<(), Error> {
        let d = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        let address = self.options.address.to_string();
        let args = [
            format!("--etcd-servers={ETCD_CLIENT}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            format!("--secure-port={API_PORT}"),
            format!("--cert-dir={}", d("cert-dir")),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={}", self.options.service_cidrs),
            "--authorization-mode=Node,RBAC".into(),
            // The default plugins plus what kubeadm adds.
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        let mut args = args.to_vec();
        if self.options.address.is_loopback() {
            // The API server refuses to publish a loopback address as the `kubernetes`
            // Service's endpoint: that Service then has none.
            args.push("--endpoint-reconciler-type=none".into());
        }
        args.extend(self.options.apiserver_args.iter().cloned());
        self.apiserver =
            Some(self.spawn(&self.binaries.kube_apiserver, &args, "kube-apiserver")?);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            for (process, child) in [
                (Process::Etcd, &mut self.etcd),
                (Process::ApiServer, &mut self.apiserver),
            ] {
                if let Some(c) = child
                    && let Ok(Some(status)) = c.try_wait()
                {
                    return Err(Error::Exited {
                        process: process.name(),
                        status,
                        log: tail(&self.dir.join(format!("{}.log", process.name())), 30),
                    });
                }
            }
            let last = match self.kubectl_ok(&["get", "--raw=/readyz"]) {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body.trim().to_string(),
                Err(e) => e.to_string(),
            };
            if start.elapsed() > self.options.ready_timeout {
                return Err(Error::NotReady {
                    waited: start.elapsed(),
                    last,
                    log: self.log_tail("kube-apiserver", 30),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.own_netns {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The first address of the first IPv4 or IPv6 range of `cidrs` (`10.96.0.0/16` ->
/// `10.96.0.1`): the `kubernetes` Service's ClusterIP.
fn first_service_ip(cidrs: &str) -> Option<IpAddr> {
    let (net, _) = cidrs.split(',').next()?.trim().split_once('/')?;
    Some(match net.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_service_ip() {
        assert_eq!(
            first_service_ip("10.96.0.0/16,fd00:96::/112"),
            Some("10.96.0.1".parse().unwrap())
        );
        assert_eq!(
            first_service_ip("fd00:96::/112"),
            Some("fd00:96::1".parse().unwrap())
        );
        assert_eq!(first_service_ip("bogus"), None);
    }
}
