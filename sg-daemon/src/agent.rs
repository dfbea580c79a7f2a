//! The host agent (`sg-daemon run`).
//!
//! Start-up: mount bpffs if needed, adopt (or load) the pinned data plane, reconcile it
//! with the stored state. Then serve operator commands on a Unix socket (root, or a
//! configured group, checked with SO_PEERCRED), reload the geo database when its file
//! changes or on SIGHUP, and serve metrics when asked. SIGTERM/SIGINT stop serving;
//! enforcement stays in place (everything is pinned).
//!
//! Protocol: one JSON request per connection, `{"argv": [...], "cwd": "..."}` (at most
//! 64 KiB, one line), answered with `{"code": N, "stdout": "...", "stderr": "..."}`.
//! `argv` is parsed like the command line; the agent's own paths (bpffs, state
//! directory, network namespace) always apply.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::cli::{AgentArgs, Cli, Command, Global, Out, execute, geo_refresh, reconcile};
use crate::metrics::Metrics;

/// Largest request accepted on the control socket.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub argv: Vec<String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Response {
    fn error(code: i32, msg: impl std::fmt::Display) -> Self {
        Response { code, stdout: String::new(), stderr: format!("error: {msg}\n") }
    }
}

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(g: Global, args: AgentArgs) -> Result<()> {
    // Threads started from here on inherit the network namespace entered by main.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = rt.block_on(serve(g, args));
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    // Blocking helpers (the event pump) notice STOP within their poll interval.
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Set when the agent stops, for its blocking helper threads.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn serve(g: Global, args: AgentArgs) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    // Claim the socket first: a second agent must not reconcile under a running one.
    let listener = bind_socket(&g.socket, args.socket_gid)?;
    // Reconcile before serving: the kernel matches the stored state first.
    let started = Instant::now();
    let g2 = g.clone();
    let rec = tokio::task::spawn_blocking(move || {
        let mut o = Out::default();
        reconcile(&g2, &mut o).map(|()| o)
    })
    .await?;
    match rec {
        Ok(o) => info!(ms = started.elapsed().as_millis() as u64, "{}", o.stdout.trim()),
        Err(e) => {
            // Enforcement stays as pinned; operators see why in the log and metrics.
            metrics.apply_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error!("reconciling with the stored state failed: {e:#}");
        }
    }
    metrics.record_apply(started.elapsed());

    // Drop events: the agent is the ring buffer's reader while it runs.
    let recent = Arc::new(std::sync::Mutex::new(crate::events::Recent::default()));
    let (events_tx, _) = tokio::sync::broadcast::channel::<crate::events::EventRow>(4096);
    {
        let (g8, recent8, tx8) = (g.clone(), recent.clone(), events_tx.clone());
        tokio::task::spawn_blocking(move || event_pump(&g8, &recent8, &tx8));
    }

    info!(socket = %g.socket.display(), "serving operator commands");
    notify_ready();

    // One command at a time: they serialise on the state lock anyway, and this keeps
    // a burst of requests from piling up blocking threads.
    let busy = Arc::new(Mutex::new(()));
    if let Some(addr) = args.metrics {
        let (g3, m3) = (g.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, g3, m3).await {
                error!("metrics endpoint: {e:#}");
            }
        });
    }
    {
        let (g4, busy4) = (g.clone(), busy.clone());
        let period = Duration::from_secs(args.geo_watch_secs.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let _guard = busy4.lock().await;
                let g5 = g4.clone();
                match tokio::task::spawn_blocking(move || geo_refresh(&g5)).await {
                    Ok(Ok(true)) => info!("geo database changed on disk: prefix set reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => warn!("geo database check: {e:#}"),
                    Err(e) => warn!("geo database check panicked: {e}"),
                }
            }
        });
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the geo database");
                let _guard = busy.lock().await;
                let g6 = g.clone();
                let mut o = Out::default();
                let r = tokio::task::spawn_blocking(move || {
                    let cli = Cli::try_parse_from(["sg-daemon", "geo", "reload"]).expect("static argv");
                    execute(&g6, cli.command, &mut o).map(|()| o)
                }).await;
                if let Ok(Err(e)) = r { warn!("geo reload: {e:#}"); }
            }
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => { warn!("accept: {e}"); continue; }
                };
                let (g7, busy7, m7) = (g.clone(), busy.clone(), metrics.clone());
                let ev = EventFeed { recent: recent.clone(), tx: events_tx.clone() };
                let gid = args.socket_gid;
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, g7, busy7, gid, m7, ev).await {
                        warn!("control connection: {e:#}");
                    }
                });
            }
        }
    }
    info!("stopping: enforcement stays in place (pinned)");
    let _ = std::fs::remove_file(&g.socket);
    Ok(())
}

fn bind_socket(path: &Path, gid: Option<u32>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a killed agent: nobody listens on it any more.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another agent is listening on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = gid {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: chown with a valid path; uid -1 keeps the owner.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
            return Err(std::io::Error::last_os_error()).context("chown of the control socket");
        }
    }
    Ok(listener)
}

/// What `events` requests are served from.
struct EventFeed {
    recent: Arc<std::sync::Mutex<crate::events::Recent>>,
    tx: tokio::sync::broadcast::Sender<crate::events::EventRow>,
}

/// Moves drop events from the kernel ring into the recent buffer and to followers.
fn event_pump(
    g: &Global,
    recent: &std::sync::Mutex<crate::events::Recent>,
    tx: &tokio::sync::broadcast::Sender<crate::events::EventRow>,
) {
    let stopping = || STOP.load(std::sync::atomic::Ordering::Relaxed);
    let mut reader = loop {
        if stopping() {
            return;
        }
        match crate::events::EventReader::open(&g.bpffs) {
            Ok(r) => break r,
            Err(e) => {
                warn!("drop events unavailable, retrying: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let mut names = std::collections::BTreeMap::new();
    let mut last_names = Instant::now() - Duration::from_secs(60);
    while !stopping() {
        let batch = reader.drain();
        if !batch.is_empty() {
            if last_names.elapsed() > Duration::from_secs(5) {
                if let Ok(store) = crate::state::StateStore::open_locked(&g.state_dir)
                    && let Ok(state) = store.load()
                {
                    names = crate::events::instance_names(&state);
                }
                last_names = Instant::now();
            }
            let mut r = recent.lock().expect("events lock");
            for ev in &batch {
                let row = crate::events::describe(ev, &names);
                r.push(row.clone());
                let _ = tx.send(row);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serves `events` (recent ones, or a stream with `-f`) from the agent's feed.
async fn serve_events(
    stream: &mut UnixStream,
    feed: &EventFeed,
    instance: Option<String>,
    follow: bool,
    json: bool,
) -> Result<()> {
    let matches = |r: &crate::events::EventRow| instance.as_deref().is_none_or(|i| r.instance == i);
    // Subscribe before taking the backlog, so nothing falls between the two.
    let mut rx = feed.tx.subscribe();
    let backlog = feed.recent.lock().expect("events lock").matching(instance.as_deref());
    if !follow {
        let stdout: String = backlog.iter().map(|r| crate::events::format_row(r, json) + "\n").collect();
        return reply(stream, &Response { code: 0, stdout, stderr: String::new() }).await;
    }
    for r in &backlog {
        stream_line(stream, &crate::events::format_row(r, json)).await?;
    }
    loop {
        match rx.recv().await {
            Ok(r) if matches(&r) => stream_line(stream, &crate::events::format_row(&r, json)).await?,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                stream_line(stream, &format!("({n} events skipped: reader too slow)")).await?;
            }
            Err(_) => return Ok(()),
        }
    }
}

/// One streamed line: `{"line": "..."}` (the final reply is a `Response`).
async fn stream_line(stream: &mut UnixStream, line: &str) -> Result<()> {
    let mut bytes = serde_json::to_vec(&serde_json::json!({ "line": line }))?;
    bytes.push(b'\n');
    stream.write_all(&bytes).await?;
    Ok(())
}

async fn handle(
    mut stream: UnixStream,
    g: Global,
    busy: Arc<Mutex<()>>,
    gid: Option<u32>,
    metrics: Arc<Metrics>,
    feed: EventFeed,
) -> Result<()> {
    let cred = stream.peer_cred()?;
    let allowed = cred.uid() == 0 || gid.is_some_and(|g| g == cred.gid());
    if !allowed {
        // Read (and ignore) the request first, so the client is not cut off mid-write
        // and sees the refusal.
        let _ = read_request(&mut stream).await;
        let resp = Response::error(
            13,
            format!("permission denied: uid {} may not use the sg control socket (root only)", cred.uid()),
        );
        return reply(&mut stream, &resp).await;
    }
    let resp = match read_request(&mut stream).await {
        Err(e) => Response::error(2, format!("bad request: {e:#}")),
        Ok(req) if req.argv.iter().any(|a| a == "events") => {
            let argv = std::iter::once("sg-daemon".to_string()).chain(req.argv.clone());
            match Cli::try_parse_from(argv) {
                Ok(Cli { command: Command::Events { instance, follow }, global }) => {
                    let json = global.output == crate::cli::Output::Json;
                    return serve_events(&mut stream, &feed, instance, follow, json).await;
                }
                Ok(_) => {
                    let _guard = busy.lock().await;
                    tokio::task::spawn_blocking(move || run_request(&g, req))
                        .await
                        .unwrap_or_else(|e| Response::error(1, format!("command panicked: {e}")))
                }
                Err(e) => Response { code: 2, stdout: String::new(), stderr: e.to_string() },
            }
        }
        Ok(req) => {
            let _guard = busy.lock().await;
            let started = Instant::now();
            let resp = tokio::task::spawn_blocking(move || run_request(&g, req))
                .await
                .unwrap_or_else(|e| Response::error(1, format!("command panicked: {e}")));
            metrics.commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if resp.code != 0 {
                metrics.command_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            metrics.record_apply(started.elapsed());
            resp
        }
    };
    reply(&mut stream, &resp).await
}

async fn read_request(stream: &mut UnixStream) -> Result<Request> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64 + 1);
    tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line))
        .await
        .context("timed out reading the request")??;
    if line.len() > MAX_REQUEST {
        anyhow::bail!("request larger than {MAX_REQUEST} bytes");
    }
    serde_json::from_slice(&line).context("not a JSON request {\"argv\": [...]}")
}

async fn reply(stream: &mut UnixStream, resp: &Response) -> Result<()> {
    let mut bytes = serde_json::to_vec(resp)?;
    bytes.push(b'\n');
    stream.write_all(&bytes).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Runs a forwarded command with the agent's paths.
fn run_request(g: &Global, req: Request) -> Response {
    let argv = std::iter::once("sg-daemon".to_string()).chain(req.argv);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => return Response { code: 2, stdout: String::new(), stderr: e.to_string() },
    };
    let mut command = cli.command;
    match &mut command {
        Command::Run(_) => return Response::error(2, "`run` cannot be sent to a running agent"),
        Command::Apply { file, .. } => {
            if file.is_relative()
                && let Some(cwd) = &req.cwd
            {
                *file = cwd.join(&*file);
            }
        }
        _ => {}
    }
    let g = Global { output: cli.global.output, ..g.clone() };
    let mut o = Out::default();
    match execute(&g, command, &mut o) {
        Ok(()) => Response { code: 0, stdout: o.stdout, stderr: o.stderr },
        Err(e) => Response { code: 1, stdout: o.stdout, stderr: format!("{}error: {e:#}\n", o.stderr) },
    }
}

/// Sends a request to a running agent; `None` when no agent listens.
pub fn forward(socket: &Path, argv: Vec<String>) -> Option<Result<Response>> {
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Some(Err(anyhow::anyhow!(
                "permission denied: the agent's control socket {} is for root (or its configured group)",
                socket.display()
            )));
        }
        Err(_) => return None,
    };
    Some((|| {
        use std::io::{BufRead, Write};
        let mut stream = stream;
        stream.set_read_timeout(Some(Duration::from_secs(600)))?;
        let req = Request { argv, cwd: std::env::current_dir().ok() };
        let mut bytes = serde_json::to_vec(&req)?;
        bytes.push(b'\n');
        // A refusal may arrive before the request is read; the reply still says why.
        let _ = stream.write_all(&bytes);
        let mut reader = std::io::BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                anyhow::bail!("the agent closed the connection without a reply");
            }
            #[derive(Deserialize)]
            struct Streamed {
                line: String,
            }
            if let Ok(s) = serde_json::from_str::<Streamed>(&line) {
                println!("{}", s.line);
                continue;
            }
            return serde_json::from_str(&line).context("malformed reply from the agent");
        }
    })())
}

/// Tells systemd (Type=notify) that the agent is ready.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = sock.send_to(b"READY=1", PathBuf::from(path));
    }
}
