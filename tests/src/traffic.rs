//! Traffic helpers: echo servers and client probes, all run in-process.
//!
//! Servers and probes create their sockets on a thread that has joined the right
//! namespace (see [`Netns::run`]), so nothing depends on socat/nc/ping being installed
//! and we can tell a silent drop (timeout) from a reset (refused) from an ICMP error,
//! which matters when checking what a security-group rule did. Every probe has a hard
//! deadline.
//!
//! The `bool` helpers (`tcp_connect`, `udp_request`, `ping`, ...) are for asserts; they
//! panic, naming the caller's line, when the *harness* fails (unknown namespace, source
//! address not assigned, ...) so such a failure can never pass as "traffic blocked".
//! The `*_probe` functions return the precise outcome instead.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::netns::Netns;
use crate::sock;

/// A sensible timeout for probes expected to succeed on a veth (they answer in
/// milliseconds) and short enough that probes expected to be dropped stay cheap.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often server loops wake up to notice they should stop.
const SERVER_TICK: Duration = Duration::from_millis(50);

/// An idle echo connection is closed after this long so stray clients cannot pin
/// server threads for the rest of a test run.
const CONN_IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Extra time granted to a namespace thread beyond the probe's own deadline before
/// the caller gives up on it (it only covers thread start-up and socket setup).
const THREAD_SLACK: Duration = Duration::from_secs(5);

/// UDP probes resend at this interval until the deadline, like a real client would.
const UDP_RESEND: Duration = Duration::from_millis(300);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking server thread must not take every later assertion down with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A payload unique within this process, so a probe can only be satisfied by the
/// echo of its own request.
fn nonce() -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("sg-tests probe {} {}\n", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)).into_bytes()
}

fn wildcard(port: u16, v6: bool) -> SocketAddr {
    let ip = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    SocketAddr::new(ip, port)
}

/// Creates a server socket bound to the wildcard address. IPv6 sockets are V6ONLY so
/// a v4 and a v6 server can share a port, and each only sees its own family.
fn server_socket(port: u16, v6: bool, ty: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    let addr = wildcard(port, v6);
    let fd = sock::socket(addr.ip(), ty, 0)?;
    sock::set_reuseaddr(&fd)?;
    if v6 {
        sock::set_v6only(&fd)?;
    }
    sock::bind(&fd, addr)?;
    Ok(fd)
}

/// State shared between a server handle and its threads.
#[derive(Default)]
struct ServerState {
    stop: AtomicBool,
    peers: Mutex<Vec<SocketAddr>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl ServerState {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Signals every thread to stop and waits for them (each wakes within a tick).
    fn shut_down(&self, main: Option<JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(main) = main {
            let _ = main.join();
        }
        for worker in lock(&self.workers).drain(..) {
            let _ = worker.join();
        }
    }
}

/// A TCP echo server running in a namespace: every byte received on a connection is
/// sent back. Stopped (and all its connections closed) on drop.
///
/// It is listening as soon as it is returned: the socket is bound and listening
/// before the constructor returns, so no readiness polling is needed.
pub struct TcpServer {
    ns: Netns,
    local: SocketAddr,
    state: Arc<ServerState>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Starts an echo server on `port` (0 picks a free one) on all IPv4 or all IPv6
    /// addresses of `ns`.
    pub fn start(ns: impl AsRef<Netns>, port: u16, v6: bool) -> Result<Self> {
        let ns = ns.as_ref().clone();
        let listener = ns
            .run(move || -> io::Result<TcpListener> {
                let fd = server_socket(port, v6, libc::SOCK_STREAM)?;
                sock::listen(&fd, 128)?;
                let listener = TcpListener::from(fd);
                listener.set_nonblocking(true)?;
                Ok(listener)
            })?
            .with_context(|| format!("starting TCP server on {} in {ns}", wildcard(port, v6)))?;
        let local = listener.local_addr().context("TCP server local address")?;
        let state = Arc::new(ServerState::default());
        let thread_state = Arc::clone(&state);
        let acceptor = std::thread::Builder::new()
            .name(format!("tcp-server-{}-{}", ns.name(), local.port()))
            .spawn(move || accept_loop(&listener, &thread_state))
            .context("spawning TCP server thread")?;
        Ok(TcpServer { ns, local, state, acceptor: Some(acceptor) })
    }

    /// The port it listens on (useful after binding port 0).
    pub fn port(&self) -> u16 {
        self.local.port()
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Source addresses of every connection accepted so far, oldest first — lets a
    /// test check which address a client really came from.
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.state.peers).clone()
    }

    /// Number of connections accepted so far.
    pub fn accepted(&self) -> usize {
        lock(&self.state.peers).len()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.state.shut_down(self.acceptor.take());
    }
}

impl std::fmt::Debug for TcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpServer").field("ns", &self.ns.name()).field("local", &self.local).finish()
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<ServerState>) {
    while !state.stopping() {
        match listener.accept() {
            Ok((stream, peer)) => {
                lock(&state.peers).push(peer);
                let conn_state = Arc::clone(state);
                match std::thread::Builder::new()
                    .name(format!("tcp-echo-{peer}"))
                    .spawn(move || echo_connection(stream, &conn_state))
                {
                    Ok(worker) => {
                        let mut workers = lock(&state.workers);
                        workers.retain(|w| !w.is_finished());
                        workers.push(worker);
                    }
                    Err(e) => eprintln!("sg-tests: TCP server could not spawn a connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = sock::poll(listener.as_raw_fd(), libc::POLLIN, SERVER_TICK);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // ECONNABORTED and friends: log and keep serving.
                eprintln!("sg-tests: TCP server accept failed: {e}");
                std::thread::sleep(SERVER_TICK);
            }
        }
    }
}

fn echo_connection(mut stream: TcpStream, state: &ServerState) {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; be explicit anyway.
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(SERVER_TICK)).is_err()
        || stream.set_write_timeout(Some(Duration::from_secs(2))).is_err()
    {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut last_activity = Instant::now();
    while !state.stopping() {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
                last_activity = Instant::now();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if last_activity.elapsed() > CONN_IDLE_LIMIT {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A UDP echo server running in a namespace: every datagram is sent back to its
/// sender. Stopped on drop.
pub struct UdpEchoServer {
    ns: Netns,
    local: SocketAddr,
    state: Arc<ServerState>,
    worker: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Starts an echo server on UDP `port` (0 picks a free one) on all IPv4 or all
    /// IPv6 addresses of `ns`. Ready when returned.
    pub fn start(ns: impl AsRef<Netns>, port: u16, v6: bool) -> Result<Self> {
        let ns = ns.as_ref().clone();
        let socket = ns
            .run(move || -> io::Result<UdpSocket> {
                let socket = UdpSocket::from(server_socket(port, v6, libc::SOCK_DGRAM)?);
                socket.set_read_timeout(Some(SERVER_TICK))?;
                Ok(socket)
            })?
            .with_context(|| format!("starting UDP echo server on {} in {ns}", wildcard(port, v6)))?;
        let local = socket.local_addr().context("UDP server local address")?;
        let state = Arc::new(ServerState::default());
        let thread_state = Arc::clone(&state);
        let worker = std::thread::Builder::new()
            .name(format!("udp-echo-{}-{}", ns.name(), local.port()))
            .spawn(move || udp_echo_loop(&socket, &thread_state))
            .context("spawning UDP echo thread")?;
        Ok(UdpEchoServer { ns, local, state, worker: Some(worker) })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.local.port()
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Sender addresses of every datagram echoed so far, oldest first.
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.state.peers).clone()
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.state.shut_down(self.worker.take());
    }
}

impl std::fmt::Debug for UdpEchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpEchoServer").field("ns", &self.ns.name()).field("local", &self.local).finish()
    }
}

fn udp_echo_loop(socket: &UdpSocket, state: &ServerState) {
    let mut buf = vec![0u8; 65536];
    while !state.stopping() {
        // Errors are ignored: timeouts are our stop-flag tick, and anything else (e.g.
        // a queued ICMP error from an earlier reply) must not kill the server.
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            lock(&state.peers).push(peer);
            if let Err(e) = socket.send_to(&buf[..n], peer) {
                eprintln!("sg-tests: UDP echo to {peer} failed: {e}");
            }
        }
    }
}

/// Starts a TCP echo server; see [`TcpServer::start`].
pub fn tcp_server(ns: impl AsRef<Netns>, port: u16, v6: bool) -> Result<TcpServer> {
    TcpServer::start(ns, port, v6)
}

/// Starts a UDP echo server; see [`UdpEchoServer::start`].
pub fn udp_echo_server(ns: impl AsRef<Netns>, port: u16, v6: bool) -> Result<UdpEchoServer> {
    UdpEchoServer::start(ns, port, v6)
}

/// What happened to a TCP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Handshake completed and the server echoed our payload: traffic flows both ways.
    Echoed,
    /// Handshake completed but the echo did not come back in time (or the connection
    /// was reset/closed): e.g. data packets dropped after the SYN exchange.
    NoEcho,
    /// The SYN was answered with a RST (closed port, or an explicit reject).
    Refused,
    /// Nothing came back before the deadline: the silent drop of a firewall.
    TimedOut,
    /// An ICMP error (or a local routing error) ended the attempt; holds the errno,
    /// e.g. `libc::EHOSTUNREACH`. Linux may only give up on the retransmitted SYN
    /// (after ~1 s; seen with ICMPv6 "no route"), so allow a 2 s+ timeout for this.
    Unreachable(i32),
}

/// What happened to a UDP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpOutcome {
    /// The server echoed our datagram.
    Echoed,
    /// No matching reply before the deadline.
    NoReply,
    /// ICMP port unreachable came back (nothing listening, or an explicit reject).
    Refused,
    /// Another ICMP/routing error; holds the errno.
    Unreachable(i32),
}

/// Errors that describe the network's answer rather than a harness problem.
fn unreachable_errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().filter(|errno| {
        [libc::EHOSTUNREACH, libc::ENETUNREACH, libc::EHOSTDOWN, libc::ENETDOWN, libc::EACCES, libc::EPERM]
            .contains(errno)
    })
}

fn check_families(src: Option<IpAddr>, dst: IpAddr) -> Result<()> {
    if let Some(src) = src {
        ensure!(
            src.is_ipv4() == dst.is_ipv4(),
            "source {src} and destination {dst} are of different families"
        );
    }
    Ok(())
}

/// Creates a socket for talking to `dst`, bound to `src` if given.
fn client_socket(
    src: Option<IpAddr>,
    dst: IpAddr,
    ty: libc::c_int,
    proto: libc::c_int,
) -> Result<std::os::fd::OwnedFd> {
    let fd = sock::socket(dst, ty, proto).context("creating client socket")?;
    if let Some(src) = src {
        sock::bind(&fd, SocketAddr::new(src, 0))
            .with_context(|| format!("binding source address {src} (is it assigned in this namespace?)"))?;
    }
    Ok(fd)
}

/// Opens a TCP connection from namespace `ns` (from `src` if given) to `dst`, sends a
/// unique payload and waits for its echo, all within `timeout`.
///
/// Errors mean the harness could not run the probe, never that traffic was blocked.
pub fn tcp_probe(
    ns: impl AsRef<Netns>,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpOutcome> {
    let ns = ns.as_ref();
    check_families(src, dst.ip())?;
    let outcome = ns.run_with_timeout(timeout + THREAD_SLACK, move || -> Result<TcpOutcome> {
        let deadline = Instant::now() + timeout;
        let fd = client_socket(src, dst.ip(), libc::SOCK_STREAM, 0)?;
        if let Err(e) = sock::connect_timeout(&fd, dst, timeout) {
            return match e.kind() {
                io::ErrorKind::TimedOut => Ok(TcpOutcome::TimedOut),
                io::ErrorKind::ConnectionRefused => Ok(TcpOutcome::Refused),
                _ => match unreachable_errno(&e) {
                    Some(errno) => Ok(TcpOutcome::Unreachable(errno)),
                    None => Err(e).context(format!("connecting to {dst}")),
                },
            };
        }
        let mut stream = TcpStream::from(fd);
        let payload = nonce();
        let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        stream.set_write_timeout(Some(left())).context("setting write timeout")?;
        if stream.write_all(&payload).is_err() {
            return Ok(TcpOutcome::NoEcho);
        }
        let mut echoed = Vec::with_capacity(payload.len());
        let mut buf = [0u8; 256];
        while echoed.len() < payload.len() && Instant::now() < deadline {
            stream.set_read_timeout(Some(left())).context("setting read timeout")?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => echoed.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        Ok(if echoed == payload { TcpOutcome::Echoed } else { TcpOutcome::NoEcho })
    })?;
    outcome.with_context(|| format!("TCP probe from {ns} to {dst}"))
}

/// True if a TCP connection from `ns` to `addr:port` is established and the echo
/// server's reply comes back within `timeout`. False on a drop (timeout), a RST or an
/// ICMP error. Panics if the harness itself fails (see module docs).
#[track_caller]
pub fn tcp_connect(ns: impl AsRef<Netns>, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    let ns = ns.as_ref();
    match tcp_probe(ns, None, SocketAddr::new(addr, port), timeout) {
        Ok(outcome) => outcome == TcpOutcome::Echoed,
        Err(e) => panic!("tcp_connect from {ns} to {addr}:{port}: harness failure: {e:#}"),
    }
}

/// Like [`tcp_connect`], from source address `src` (which must be assigned in `ns`,
/// e.g. with [`crate::Endpoint::add_addr`]).
#[track_caller]
pub fn tcp_connect_from(
    ns: impl AsRef<Netns>,
    src: IpAddr,
    addr: IpAddr,
    port: u16,
    timeout: Duration,
) -> bool {
    let ns = ns.as_ref();
    match tcp_probe(ns, Some(src), SocketAddr::new(addr, port), timeout) {
        Ok(outcome) => outcome == TcpOutcome::Echoed,
        Err(e) => panic!("tcp_connect_from {src} in {ns} to {addr}:{port}: harness failure: {e:#}"),
    }
}

/// Sends a unique datagram from `ns` (from `src` if given) to `dst` and waits for its
/// echo, resending every 300 ms until `timeout`.
pub fn udp_probe(
    ns: impl AsRef<Netns>,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<UdpOutcome> {
    let ns = ns.as_ref();
    check_families(src, dst.ip())?;
    let outcome = ns.run_with_timeout(timeout + THREAD_SLACK, move || -> Result<UdpOutcome> {
        let deadline = Instant::now() + timeout;
        let fd = client_socket(src, dst.ip(), libc::SOCK_DGRAM, 0)?;
        // Connected, so ICMP errors for this flow are reported to us.
        sock::connect(&fd, dst).with_context(|| format!("connecting UDP socket to {dst}"))?;
        let socket = UdpSocket::from(fd);
        let payload = nonce();
        let mut buf = [0u8; 2048];
        let classify = |e: io::Error| -> Result<Option<UdpOutcome>> {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                return Ok(Some(UdpOutcome::Refused));
            }
            if let Some(errno) = unreachable_errno(&e) {
                return Ok(Some(UdpOutcome::Unreachable(errno)));
            }
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e).context(format!("UDP exchange with {dst}")),
            }
        };
        while Instant::now() < deadline {
            if let Err(e) = socket.send(&payload)
                && let Some(outcome) = classify(e)?
            {
                return Ok(outcome);
            }
            let resend_at = (Instant::now() + UDP_RESEND).min(deadline);
            loop {
                let left = resend_at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socket.set_read_timeout(Some(left)).context("setting read timeout")?;
                match socket.recv(&mut buf) {
                    Ok(n) if buf[..n] == payload[..] => return Ok(UdpOutcome::Echoed),
                    Ok(_) => {} // a late echo of nothing of ours; keep waiting
                    Err(e) => {
                        if let Some(outcome) = classify(e)? {
                            return Ok(outcome);
                        }
                    }
                }
            }
        }
        Ok(UdpOutcome::NoReply)
    })?;
    outcome.with_context(|| format!("UDP probe from {ns} to {dst}"))
}

/// True if a datagram sent from `ns` to `addr:port` is echoed back within `timeout`
/// (see [`udp_echo_server`]). Panics if the harness itself fails.
#[track_caller]
pub fn udp_request(ns: impl AsRef<Netns>, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    let ns = ns.as_ref();
    match udp_probe(ns, None, SocketAddr::new(addr, port), timeout) {
        Ok(outcome) => outcome == UdpOutcome::Echoed,
        Err(e) => panic!("udp_request from {ns} to {addr}:{port}: harness failure: {e:#}"),
    }
}

/// Like [`udp_request`], from source address `src` (which must be assigned in `ns`).
#[track_caller]
pub fn udp_request_from(
    ns: impl AsRef<Netns>,
    src: IpAddr,
    addr: IpAddr,
    port: u16,
    timeout: Duration,
) -> bool {
    let ns = ns.as_ref();
    match udp_probe(ns, Some(src), SocketAddr::new(addr, port), timeout) {
        Ok(outcome) => outcome == UdpOutcome::Echoed,
        Err(e) => panic!("udp_request_from {src} in {ns} to {addr}:{port}: harness failure: {e:#}"),
    }
}

/// Sends `count` ICMP (v4 or v6) echo requests from `ns` (from `src` if given) to
/// `dst` and returns how many replies arrived within `timeout` in total.
///
/// Uses unprivileged ICMP "ping" sockets: the kernel fills in the identifier and the
/// checksum and hands each socket only the replies to its own requests. They need
/// `net.ipv4.ping_group_range` to include our gid, which [`crate::Topology`] sets in
/// every namespace it creates.
pub fn ping_probe(
    ns: impl AsRef<Netns>,
    src: Option<IpAddr>,
    dst: IpAddr,
    count: u16,
    timeout: Duration,
) -> Result<u16> {
    let ns = ns.as_ref();
    check_families(src, dst)?;
    ensure!(count > 0, "ping count must be positive");
    let received = ns.run_with_timeout(timeout + THREAD_SLACK, move || -> Result<u16> {
        let deadline = Instant::now() + timeout;
        let (proto, request, reply) = match dst {
            IpAddr::V4(_) => (libc::IPPROTO_ICMP, 8u8, 0u8),
            IpAddr::V6(_) => (libc::IPPROTO_ICMPV6, 128u8, 129u8),
        };
        let fd = client_socket(src, dst, libc::SOCK_DGRAM, proto)
            .context("creating ICMP ping socket (is net.ipv4.ping_group_range set in this namespace?)")?;
        // std's UdpSocket is just a datagram-socket wrapper: send_to/recv_from work
        // unchanged on a ping socket.
        let socket = UdpSocket::from(fd);
        let target = SocketAddr::new(dst, 0);
        for seq in 1..=count {
            let [hi, lo] = seq.to_be_bytes();
            // type, code, checksum (kernel), identifier (kernel), sequence, payload
            let mut packet = vec![request, 0, 0, 0, 0, 0, hi, lo];
            packet.extend_from_slice(b"sg-tests ping");
            if let Err(e) = socket.send_to(&packet, target) {
                // Routing/ICMP errors mean "no reply" for this request, not a harness bug.
                if unreachable_errno(&e).is_none() {
                    return Err(e).context(format!("sending echo request to {dst}"));
                }
            }
        }
        let mut seen = vec![false; usize::from(count) + 1];
        let mut received = 0u16;
        let mut buf = [0u8; 2048];
        while received < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left)).context("setting read timeout")?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if n >= 8 && from.ip() == dst && buf[0] == reply => {
                    let seq = usize::from(u16::from_be_bytes([buf[6], buf[7]]));
                    if seq >= 1 && seq <= usize::from(count) && !seen[seq] {
                        seen[seq] = true;
                        received += 1;
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                // Queued ICMP errors surface here; keep waiting for real replies.
                Err(_) => {}
            }
        }
        Ok(received)
    })?;
    received.with_context(|| format!("ping from {ns} to {dst}"))
}

/// True if at least one of `count` echo requests from `ns` to `addr` (v4 or v6) is
/// answered within `timeout` — the exit-status semantics of `ping -c count`. Panics if
/// the harness itself fails. Use [`ping_probe`] for the exact number of replies.
#[track_caller]
pub fn ping(ns: impl AsRef<Netns>, addr: IpAddr, count: u16, timeout: Duration) -> bool {
    let ns = ns.as_ref();
    match ping_probe(ns, None, addr, count, timeout) {
        Ok(received) => received > 0,
        Err(e) => panic!("ping from {ns} to {addr}: harness failure: {e:#}"),
    }
}

/// Like [`ping`], from source address `src` (which must be assigned in `ns`).
#[track_caller]
pub fn ping_from(ns: impl AsRef<Netns>, src: IpAddr, addr: IpAddr, count: u16, timeout: Duration) -> bool {
    let ns = ns.as_ref();
    match ping_probe(ns, Some(src), addr, count, timeout) {
        Ok(received) => received > 0,
        Err(e) => panic!("ping_from {src} in {ns} to {addr}: harness failure: {e:#}"),
    }
}

/// How long [`EchoConn::open`] waits for the connection.
pub const ECHO_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A long-lived TCP connection to an echo server (e.g. [`tcp_server`]), opened from
/// within a namespace (the socket stays in that namespace) and used from the test
/// thread: for checking that an established connection survives, or is cut.
pub struct EchoConn {
    stream: TcpStream,
    /// `"<endpoint> -> <destination>"`, for messages.
    pub label: String,
}

impl EchoConn {
    /// Connects from `from` to `dst`; panics if the connection cannot be made.
    #[track_caller]
    pub fn open(from: &crate::Endpoint, dst: SocketAddr) -> EchoConn {
        let label = format!("{} -> {dst}", from.name());
        let stream = from
            .ns()
            .run(move || TcpStream::connect_timeout(&dst, ECHO_CONNECT_TIMEOUT))
            .unwrap_or_else(|e| panic!("{label}: harness failure: {e:#}"))
            .unwrap_or_else(|e| panic!("{label}: connect failed: {e}"));
        EchoConn { stream, label }
    }

    /// The connection's own (client-side) address.
    pub fn local(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address of a connected socket")
    }

    /// Sends a unique line and waits up to `timeout` for its echo; the error says what
    /// went wrong (no echo in time, closed, a wrong echo: a late one of an earlier
    /// exchange that had failed).
    pub fn exchange(&mut self, timeout: Duration) -> Result<(), String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let line = format!("sg echo {} {}\n", self.label, NEXT.fetch_add(1, Ordering::Relaxed));
        self.stream.write_all(line.as_bytes()).map_err(|e| format!("{}: write: {e}", self.label))?;
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.len() < line.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{}: no echo within {timeout:?}", self.label));
            }
            self.stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(format!("{}: closed by the peer", self.label)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("{}: read: {e}", self.label)),
            }
        }
        if got != line.as_bytes() {
            return Err(format!("{}: wrong echo {:?}", self.label, String::from_utf8_lossy(&got)));
        }
        Ok(())
    }
}
