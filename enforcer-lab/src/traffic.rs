//! Servers and probes, in-process. Each socket is made on a thread that has entered the pod's
//! network namespace (a socket keeps its namespace for life), then driven by tokio.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::netns::Netns;
use crate::scenario::Protocol;

const IPPROTO_SCTP: i32 = 132;

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Observed {
    Allow,
    Deny,
    Unsupported,
}

impl Observed {
    pub fn as_str(self) -> &'static str {
        match self {
            Observed::Allow => "allow",
            Observed::Deny => "deny",
            Observed::Unsupported => "unsupported",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub observed: Observed,
    /// Why (`connected`, `echoed`, `timeout`, `refused`, …).
    pub detail: String,
    /// The source port the probe used, to find its events.
    pub src_port: Option<u16>,
    /// Who answered: `<endpoint> <address:port>` as the server says (TCP to a Service, UDP).
    pub backend: Option<String>,
}

/// What a UDP server appends to an echo, before its name.
const ECHO_SEP: &[u8] = b"\n@";

fn domain(ip: &IpAddr) -> Domain {
    if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn sock_type(p: Protocol) -> (Type, SockProto) {
    match p {
        Protocol::Tcp => (Type::STREAM, SockProto::TCP),
        Protocol::Udp => (Type::DGRAM, SockProto::UDP),
        Protocol::Sctp => (Type::STREAM, SockProto::from(IPPROTO_SCTP)),
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EAFNOSUPPORT)
    )
}

/// A socket of `proto` bound to `ip:port`, non-blocking. `Ok(None)` when the kernel lacks the
/// protocol.
fn bound_socket(proto: Protocol, ip: IpAddr, port: u16) -> io::Result<Option<Socket>> {
    let (ty, p) = sock_type(proto);
    let s = match Socket::new(domain(&ip), ty, Some(p)) {
        Ok(s) => s,
        Err(e) if unsupported(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if ip.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if port != 0 {
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(SocketAddr::new(ip, port)))?;
    Ok(Some(s))
}

/// Starts the servers of one pod or host named `name`: for each address and declared port, a
/// TCP listener that sends `<name> <its address:port>\n` and closes, a UDP echo that appends
/// `\n@<name> <address:port>` to what it echoes, or an SCTP listener (where the kernel has
/// SCTP). The name tells a probe through a Service which backend answered.
pub fn serve(
    ns: &Netns,
    name: &str,
    ips: &[IpAddr],
    ports: &[(Protocol, u16)],
) -> Result<Vec<JoinHandle<()>>> {
    let ips = ips.to_vec();
    let ports = ports.to_vec();
    let sockets = ns.run(move || {
        let mut out = Vec::new();
        for ip in &ips {
            for (proto, port) in &ports {
                let s = bound_socket(*proto, *ip, *port)
                    .with_context(|| format!("serving {proto} {}", SocketAddr::new(*ip, *port)))?;
                if let Some(s) = s {
                    if *proto != Protocol::Udp {
                        s.listen(128)?;
                    }
                    out.push((*proto, s));
                }
            }
        }
        Ok(out)
    })?;
    let mut tasks = Vec::new();
    for (proto, s) in sockets {
        let ident = match s.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(a) => format!("{name} {a}"),
            None => name.to_string(),
        };
        tasks.push(match proto {
            Protocol::Tcp => {
                let l = tokio::net::TcpListener::from_std(s.into())?;
                let hello = format!("{ident}\n").into_bytes();
                tokio::spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((conn, _)) => {
                                // A fresh socket's send buffer is empty: this cannot block.
                                let _ = conn.try_write(&hello);
                                drop(conn);
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                })
            }
            Protocol::Udp => {
                let u = tokio::net::UdpSocket::from_std(s.into())?;
                let suffix = [ECHO_SEP, ident.as_bytes()].concat();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    loop {
                        if let Ok((n, from)) = u.recv_from(&mut buf).await {
                            let reply = [&buf[..n], &suffix[..]].concat();
                            let _ = u.send_to(&reply, from).await;
                        }
                    }
                })
            }
            Protocol::Sctp => {
                // SAFETY: the socket owns its descriptor for as long as the AsyncFd holds it.
                let fd = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
                    .map_err(io::Error::from)?;
                tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable().await else {
                            return;
                        };
                        if let Ok(Ok((conn, _))) = guard.try_io(|inner| inner.get_ref().accept()) {
                            drop(conn);
                        }
                    }
                })
            }
        });
    }
    Ok(tasks)
}

fn classify(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "unreachable".into(),
        Some(libc::EPERM | libc::EACCES) => "not permitted".into(),
        _ => e.to_string(),
    }
}

fn deny(detail: impl Into<String>, src_port: Option<u16>) -> Outcome {
    Outcome {
        observed: Observed::Deny,
        detail: detail.into(),
        src_port,
        backend: None,
    }
}

/// Sends one probe from `src` (an address of the pod in `ns`) to `dst:port`. A connection
/// established (TCP, SCTP) or a payload echoed (UDP) within `timeout` is `allow`. With
/// `who_answers`, a TCP probe also reads the server's name (which backend of a Service).
pub async fn probe(
    ns: &Netns,
    proto: Protocol,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
    payload: Vec<u8>,
    who_answers: bool,
) -> Result<Outcome> {
    let sock = ns.run(move || {
        let s = bound_socket(proto, src, 0).with_context(|| format!("{proto} socket on {src}"))?;
        Ok(s.map(|s| {
            let port = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map(|a| a.port());
            (s, port)
        }))
    })?;
    let Some((sock, src_port)) = sock else {
        return Ok(Outcome {
            observed: Observed::Unsupported,
            detail: format!("this kernel has no {proto} sockets"),
            src_port: None,
            backend: None,
        });
    };
    let started = tokio::time::Instant::now();
    match proto {
        Protocol::Tcp if who_answers => {
            let (out, sock) = connect(sock, dst, timeout, src_port).await;
            match (out.observed, sock) {
                (Observed::Allow, Some(sock)) => {
                    let left = timeout.saturating_sub(started.elapsed());
                    let backend = read_hello(sock, left.max(Duration::from_millis(200))).await;
                    Ok(Outcome { backend, ..out })
                }
                _ => Ok(out),
            }
        }
        Protocol::Tcp | Protocol::Sctp => Ok(connect(sock, dst, timeout, src_port).await.0),
        Protocol::Udp => echo(sock, dst, timeout, payload, src_port).await,
    }
}

/// What an SCTP probe says where the kernel has no SCTP sockets: the INIT reached the target
/// (one way: the target's kernel cannot answer it), or not within the timeout.
pub const SCTP_INIT_SEEN: &str = "INIT received (SCTP one-way: this kernel has no SCTP)";
pub const SCTP_INIT_LOST: &str =
    "timeout: INIT not received (SCTP one-way: this kernel has no SCTP)";

/// Source ports of forged SCTP INITs: distinct within a run (from 32768, as ephemeral ports),
/// so no probe's INIT is taken for another's and no connection-tracking entry of one serves
/// a later one.
static NEXT_SCTP_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

fn next_sctp_port() -> u16 {
    let n = NEXT_SCTP_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    32_768 + (u32::from(n) + std::process::id()) as u16 % 28_000
}

/// Where the lab watches for a hand-built SCTP INIT ([`sctp_one_way`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitWatch {
    /// A packet socket on the `eth0` of the target's own namespace (a pod, a host): it sees
    /// what every program on the way (the target's ingress too, at TC egress of its veth) let
    /// through.
    Eth0,
    /// A counter on the input hook of the node's namespace (the target is the node's address,
    /// or a host-networked pod's): there a packet socket would see the INIT on the source
    /// pod's host-side veth before that veth's TC ingress program (the pod's egress) judged
    /// it, while the input hook comes after every TC hook on the path, on this node or across
    /// the fabric ([`crate::forge::init_delivered`]).
    NodeInput,
}

/// An SCTP probe where the kernel has no SCTP sockets: the INIT a pod's SCTP stack would send
/// first, built by hand ([`crate::forge`]) and sent from `src` (an address of the source,
/// whose namespace is `src_ns`) to `dst`; `allow` when it arrives in `target` (the target's
/// namespace, and where it is watched for there) within `timeout`, else `deny`. The source's
/// egress and the target's ingress programs judge it as the first packet of a new SCTP flow,
/// as they would a real one's. An INIT that arrives at a port the target does not serve is
/// `deny`, `refused` (`served` false: a real SCTP stack would answer it with an ABORT).
/// `target` is `None` where the lab has nothing to watch: a Service (the INIT would go to
/// whichever backend the node's DNAT picks; the lab does not watch them all) or an address
/// outside the lab; the probe stays `unsupported`.
pub async fn sctp_one_way(
    src_ns: &Netns,
    target: Option<(&Netns, InitWatch)>,
    served: bool,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<Outcome> {
    let Some((dst_ns, watch)) = target else {
        return Ok(Outcome {
            observed: Observed::Unsupported,
            detail: "this kernel has no SCTP sockets, and the lab has nowhere to watch for a \
                     hand-built INIT to this target (a Service, an address outside the lab)"
                .into(),
            src_port: None,
            backend: None,
        });
    };
    let tag = next_sctp_port();
    let f = crate::forge::Forged {
        src,
        dst: dst.ip(),
        kind: crate::forge::Kind::SctpInit,
        dst_port: dst.port(),
        tag,
    };
    let (src_ns, dst_ns) = (src_ns.clone(), dst_ns.clone());
    let seen = tokio::task::spawn_blocking(move || match watch {
        InitWatch::Eth0 => crate::forge::init_reaches(&src_ns, &dst_ns, "eth0", &f, timeout),
        InitWatch::NodeInput => crate::forge::init_delivered(&src_ns, &dst_ns, &f, timeout),
    })
    .await
    .context("the SCTP INIT task")??;
    if seen && !served {
        return Ok(deny("refused", Some(tag)));
    }
    Ok(Outcome {
        observed: if seen {
            Observed::Allow
        } else {
            Observed::Deny
        },
        detail: if seen { SCTP_INIT_SEEN } else { SCTP_INIT_LOST }.into(),
        src_port: Some(tag),
        backend: None,
    })
}

/// The first line a TCP server sends (its name), if it comes within `wait`.
async fn read_hello(sock: AsyncFd<Socket>, wait: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let std_sock: std::net::TcpStream = sock.into_inner().into();
    let mut stream = tokio::net::TcpStream::from_std(std_sock).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') || buf.len() > 1024 {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// Connects; the socket comes back when the connection is established.
async fn connect(
    sock: Socket,
    dst: SocketAddr,
    timeout: Duration,
    src_port: Option<u16>,
) -> (Outcome, Option<AsyncFd<Socket>>) {
    let allow = Outcome {
        observed: Observed::Allow,
        detail: "connected".into(),
        src_port,
        backend: None,
    };
    match sock.connect(&SockAddr::from(dst)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return (deny(classify(&e), src_port), None),
    }
    // SAFETY: the socket owns its descriptor for as long as the AsyncFd holds it.
    let fd = match unsafe { AsyncFd::register_with_interest(sock, Interest::WRITABLE) } {
        Ok(fd) => fd,
        Err(e) => return (deny(io::Error::from(e).to_string(), src_port), None),
    };
    let out = match tokio::time::timeout(timeout, fd.writable()).await {
        Err(_) => deny("timeout", src_port),
        Ok(Err(e)) => deny(e.to_string(), src_port),
        Ok(Ok(_guard)) => match fd.get_ref().take_error() {
            Ok(None) => allow,
            Ok(Some(e)) | Err(e) => deny(classify(&e), src_port),
        },
    };
    let established = out.observed == Observed::Allow;
    (out, established.then_some(fd))
}

async fn echo(
    sock: Socket,
    dst: SocketAddr,
    timeout: Duration,
    payload: Vec<u8>,
    src_port: Option<u16>,
) -> Result<Outcome> {
    sock.connect(&SockAddr::from(dst))
        .with_context(|| format!("UDP connect to {dst}"))?;
    let u = tokio::net::UdpSocket::from_std(sock.into())?;
    let deadline = tokio::time::Instant::now() + timeout;
    // Three sends spread over the timeout: a lost datagram is not a verdict.
    let interval = timeout / 3;
    let mut buf = vec![0u8; 2048];
    loop {
        if let Err(e) = u.send(&payload).await {
            return Ok(deny(classify(&e), src_port));
        }
        let wait_until = (tokio::time::Instant::now() + interval).min(deadline);
        loop {
            match tokio::time::timeout_at(wait_until, u.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(n)) if buf[..n].starts_with(&payload) => {
                    let rest = &buf[payload.len()..n];
                    let backend = rest
                        .strip_prefix(ECHO_SEP)
                        .map(|b| String::from_utf8_lossy(b).into_owned());
                    if rest.is_empty() || backend.is_some() {
                        return Ok(Outcome {
                            observed: Observed::Allow,
                            detail: "echoed".into(),
                            src_port,
                            backend,
                        });
                    }
                }
                Ok(Ok(_)) => continue, // an echo of an earlier send of another probe: ignore
                // ICMP port unreachable: the datagram got there and nothing listens.
                Ok(Err(e)) => return Ok(deny(classify(&e), src_port)),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(deny("timeout", src_port));
        }
    }
}
