//! `scripts/replicas.sh` end to end: three `lapsd serve` replicas of the embedded model behind
//! vllm-router (round-robin), `lapsd bench` through the router. Checks that requests spread over
//! the replicas (each replica's `lapsd_requests_finished_total`), and that SIGKILL of one replica
//! in the middle of a run costs only the requests it held: every request ends (success or a
//! counted error, none timed out), the failures are at most the killed replica's in-flight
//! requests when it was killed (plus one that may reach it between that reading and the kill),
//! every request sent after the kill succeeds on the other replicas, and the script keeps
//! running, then stops the router and the replicas on SIGTERM.
//!
//! Opt-in, because the script installs the router from PyPI (into `.venv-router/`, the first
//! time) and the run takes a minute or two on 2 cores:
//!
//! ```sh
//! scripts/fetch-models.sh
//! cargo test -p lapsd --test replicas -- --ignored --nocapture
//! ```
//!
//! `LAPSD_BIN` picks the served binary (default: the one this test builds); the bench client is
//! always this build's.
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const REPLICAS: usize = 3;
/// Startup: the router's install on first use, then three model loads on a shared machine.
const READY_TIMEOUT: Duration = Duration::from_secs(900);
/// The bench's own per-request timeout; a request that reaches it counts as hung.
const REQUEST_TIMEOUT_S: u64 = 90;
/// Wall-clock bound on one bench run: its arrivals plus the slowest request's timeout.
const BENCH_TIMEOUT: Duration = Duration::from_secs(240);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn lapsd_bin() -> PathBuf {
    std::env::var_os("LAPSD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lapsd")))
}

/// `GET path` on a loopback port (HTTP/1.1, connection closed after the answer): the body.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// Sum of every series of a metric family (`name{...} value` lines).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests a replica has finished, whatever their finish reason.
fn finished(port: u16) -> u64 {
    metric_sum(&http_get(port, "/metrics"), "lapsd_requests_finished_total") as u64
}

/// Requests a replica holds: waiting, running or preempted.
fn in_flight(port: u16) -> u64 {
    metric_sum(&http_get(port, "/metrics"), "lapsd_requests") as u64
}

fn pid_alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

struct Replica {
    port: u16,
    pid: u32,
}

/// `scripts/replicas.sh` running; dropping it sends the script SIGTERM (it stops the router and
/// the replicas) and waits for it.
struct Cluster {
    script: Child,
    lines: mpsc::Receiver<String>,
    router_url: String,
    router_pid: u32,
    replicas: Vec<Replica>,
    log_dir: PathBuf,
}

impl Cluster {
    fn start(log_dir: &Path) -> Cluster {
        std::fs::create_dir_all(log_dir).expect("log dir");
        let stderr = File::create(log_dir.join("script.stderr")).expect("stderr file");
        let mut script = Command::new("bash")
            .arg(root().join("scripts/replicas.sh"))
            .arg(REPLICAS.to_string())
            .current_dir(root())
            .env("LAPSD_BIN", lapsd_bin())
            .env("ROUTER_POLICY", "round_robin")
            .env("LOG_DIR", log_dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start scripts/replicas.sh");
        let stdout = script.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cluster = Cluster {
            script,
            lines,
            router_url: String::new(),
            router_pid: 0,
            replicas: Vec::new(),
            log_dir: log_dir.to_path_buf(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match cluster.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "scripts/replicas.sh was not ready within {READY_TIMEOUT:?}: {}",
                    cluster.stderr()
                ),
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["router:", url, "pid", pid, ..] => {
                    cluster.router_url = url.to_string();
                    cluster.router_pid = pid.parse().expect("router pid");
                }
                ["replica", _, url, "pid", pid, ..] => cluster.replicas.push(Replica {
                    port: url.rsplit(':').next().unwrap().parse().expect("port"),
                    pid: pid.parse().expect("replica pid"),
                }),
                ["ready:", ..] => break,
                _ => {}
            }
        }
        assert_eq!(cluster.replicas.len(), REPLICAS, "replica lines");
        assert!(cluster.router_url.starts_with("http://127.0.0.1:"));
        cluster
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("script.stderr")).unwrap_or_default()
    }

    /// Lines the script has printed since the last call.
    fn new_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// SIGTERM to the script; its exit status once it has stopped everything.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.script.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.script.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.script.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.script.kill();
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `lapsd bench` through the router, started now; `wait_bench` collects its JSON.
fn spawn_bench(url: &str, requests: usize, rate: f64, seed: u64, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lapsd"))
        .args(["bench", "--url", url, "--workload", "chatbot"])
        .args(["--requests", &requests.to_string()])
        .args(["--rate", &rate.to_string(), "--seed", &seed.to_string()])
        .args(["--max-output-tokens", "16", "--no-progress"])
        .args(["--request-timeout-s", &REQUEST_TIMEOUT_S.to_string()])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(File::create(out.with_extension("stderr")).expect("bench stderr file"))
        .spawn()
        .expect("start lapsd bench")
}

fn wait_bench(mut bench: Child, out: &Path) -> Value {
    let deadline = Instant::now() + BENCH_TIMEOUT;
    let status = loop {
        if let Some(status) = bench.try_wait().expect("wait for bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = bench.kill();
            panic!("lapsd bench through the router still running after {BENCH_TIMEOUT:?}: hung");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(out.with_extension("stderr")).unwrap_or_default();
    assert!(status.success(), "lapsd bench failed: {stderr}");
    serde_json::from_str(&std::fs::read_to_string(out).expect("bench JSON")).expect("JSON")
}

fn count(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("{field}"))
}

#[test]
#[ignore = "opt-in: installs vllm-router from PyPI and serves 3 replicas for a minute or two; \
            cargo test -p lapsd --test replicas -- --ignored"]
fn requests_spread_over_replicas_and_a_killed_replica_loses_only_its_in_flight_requests() {
    let work = std::env::temp_dir().join(format!("lapsd-replicas-test-{}", std::process::id()));
    let mut cluster = Cluster::start(&work.join("logs"));
    let ports: Vec<u16> = cluster.replicas.iter().map(|r| r.port).collect();

    // 1. Spread: round-robin over three idle replicas.
    let before: Vec<u64> = ports.iter().map(|&p| finished(p)).collect();
    let spread_requests = 12;
    let out = work.join("spread.json");
    let report = wait_bench(
        spawn_bench(&cluster.router_url, spread_requests, 4.0, 1, &out),
        &out,
    );
    assert_eq!(
        count(&report, "completed"),
        spread_requests as u64,
        "{}",
        report["errors_by_kind"]
    );
    let per_replica: Vec<u64> = ports
        .iter()
        .zip(&before)
        .map(|(&p, b)| finished(p) - b)
        .collect();
    eprintln!("requests per replica, {spread_requests} through the router: {per_replica:?}");
    assert_eq!(per_replica.iter().sum::<u64>(), spread_requests as u64);
    for (&port, &n) in ports.iter().zip(&per_replica) {
        assert!(
            n as usize + 1 >= spread_requests / REPLICAS,
            "replica on port {port} served {n} of {spread_requests}: {per_replica:?}"
        );
    }

    // 2. Kill one replica (SIGKILL) in the middle of a run.
    let (requests, rate) = (45, 3.0);
    let victim = &cluster.replicas[1];
    let survivors: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| p != victim.port)
        .collect();
    let out = work.join("kill.json");
    let started = Instant::now();
    let bench = spawn_bench(&cluster.router_url, requests, rate, 2, &out);
    // From 4 s on (about a quarter of the arrivals), kill it as soon as it holds a request.
    thread::sleep(Duration::from_secs(4));
    let mut held = in_flight(victim.port);
    while held == 0 && started.elapsed() < Duration::from_secs(8) {
        thread::sleep(Duration::from_millis(20));
        held = in_flight(victim.port);
    }
    signal(victim.pid, "-KILL");
    let killed_at_s = started.elapsed().as_secs_f64();
    let survivors_at_kill: u64 = survivors.iter().map(|&p| finished(p)).sum();
    let report = wait_bench(bench, &out);

    let completed = count(&report, "completed");
    let failed = count(&report, "failed");
    let records = report["requests"].as_array().expect("request records");
    let failed_at: Vec<f64> = records
        .iter()
        .filter(|r| !r["error"].is_null())
        .map(|r| r["arrival_s"].as_f64().unwrap())
        .collect();
    let sent_after: Vec<&Value> = records
        .iter()
        .filter(|r| r["arrival_s"].as_f64().unwrap() > killed_at_s)
        .collect();
    let survivors_after: u64 =
        survivors.iter().map(|&p| finished(p)).sum::<u64>() - survivors_at_kill;
    eprintln!(
        "killed the replica on port {} at {killed_at_s:.2} s holding {held} request(s); \
         {completed} completed, {failed} failed {} (sent at {failed_at:?} s); {} sent after \
         the kill; the other replicas finished {survivors_after} after it",
        victim.port,
        report["errors_by_kind"],
        sent_after.len()
    );
    // Every request ended: a success or a counted error, none timed out.
    assert_eq!(completed + failed, requests as u64);
    assert!(
        report["errors_by_kind"].get("timeout").is_none(),
        "hung requests: {}",
        report["errors_by_kind"]
    );
    // Only what the killed replica held was lost (one more may reach it between the reading of
    // its gauge and the kill), all of it sent before the kill.
    assert!(
        failed <= held + 1,
        "{failed} failed, the replica held {held}"
    );
    assert!(
        failed_at.iter().all(|&t| t <= killed_at_s),
        "a request sent after the kill failed: {failed_at:?}, kill at {killed_at_s:.2} s"
    );
    // The others kept serving: everything sent after the kill succeeded.
    assert!(
        sent_after.len() >= 10,
        "only {} requests after the kill",
        sent_after.len()
    );
    assert!(sent_after.iter().all(|r| r["error"].is_null()));
    assert!(survivors_after >= sent_after.len() as u64);

    // The script noticed, kept running, and stops everything on SIGTERM.
    assert!(
        cluster.script.try_wait().expect("script status").is_none(),
        "scripts/replicas.sh exited when a replica died: {}",
        cluster.stderr()
    );
    let lines = cluster.new_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("replica 2 ") && l.contains("exited")),
        "{lines:?}"
    );
    let pids: Vec<u32> = cluster
        .replicas
        .iter()
        .map(|r| r.pid)
        .chain([cluster.router_pid])
        .collect();
    let status = cluster
        .stop()
        .expect("scripts/replicas.sh stops on SIGTERM");
    assert!(
        status.success(),
        "script exit {status}: {}",
        cluster.stderr()
    );
    for pid in pids {
        assert!(
            !pid_alive(pid),
            "pid {pid} still running after the script stopped"
        );
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&work);
}
