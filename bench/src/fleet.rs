//! A fleet of logged-in bench clients: the connect+login storm every
//! scenario starts with (`connect` reports on it alone; `idle`, `push`,
//! `broadcast` and `c2s` then use the clients), plus what a client needs to
//! log in (a minted token, a source address, a uid bench can address).

use crate::pace::{Pacer, Schedule};
use crate::{report, sources, Recorder};
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidegate_logic::auth::Auth;
use tidegate_logic::config::AppConfig;
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::{AppCode, ErrorCode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How a storm connects and logs its clients in.
#[derive(Debug, Clone)]
pub struct StormPlan {
    /// Gateway client address (loopback).
    pub target: SocketAddr,
    /// Index of the first client (a worker process's share starts past 0,
    /// so every process logs in different uids from different sources).
    pub first: usize,
    /// Clients to log in: indices `first .. first + connections`; client i
    /// is uid [`uid`]`(i)`.
    pub connections: usize,
    /// App to log in to.
    pub app: AppCode,
    /// The app's token secret.
    pub secret: String,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Attempts started per second on an open-loop schedule; `None`: as
    /// fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Connect plus login must finish within this, or the attempt counts as a timeout.
    pub timeout: Duration,
}

impl StormPlan {
    /// The longest the storm can take: its schedule, then every wave of
    /// `concurrency` attempts timing out. Scenarios add it to their hard deadline.
    pub fn worst_case(&self) -> Duration {
        let waves = self.connections.div_ceil(self.concurrency.max(1)) as u32;
        let schedule = self.rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(self.connections as f64 / r)
        });
        schedule + self.timeout * waves
    }
}

/// A logged-in client and its position in the fleet.
pub struct Member {
    /// Its index (its uid is [`uid`]`(index)`).
    pub index: usize,
    /// The connection.
    pub client: Client,
}

/// What a storm produced and how long its logins took.
pub struct Storm {
    /// The clients that logged in, in index order.
    pub members: Vec<Member>,
    /// Failed attempts by reason (`refused`, `timeout`, `auth_failed`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Connect+login, from each attempt's due instant (rate) or start.
    pub latency: Recorder,
    /// The TCP connect alone.
    pub connect_latency: Recorder,
    /// First attempt to last answer.
    pub elapsed: Duration,
}

impl Storm {
    /// Logins per second over the storm.
    pub fn logins_per_s(&self) -> f64 {
        self.members.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Fails unless every client logged in (scenarios that need all of them).
    pub fn require_all(&self, wanted: usize) -> anyhow::Result<()> {
        require_all(self.members.len(), wanted, &self.failures)
    }
}

/// Fails unless `logged_in` is all `wanted` clients, naming the failures.
pub fn require_all(
    logged_in: usize,
    wanted: usize,
    failures: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        logged_in == wanted,
        "only {logged_in} of {wanted} clients logged in; failures: {failures:?}"
    );
    Ok(())
}

/// The uid of fleet client `i`.
pub fn uid(i: usize) -> String {
    format!("bench-{i}")
}

/// Connects and logs in `plan.connections` clients.
pub async fn storm(plan: &StormPlan) -> anyhow::Result<Storm> {
    report::ensure_loopback(plan.target, "--target")?;
    anyhow::ensure!(plan.concurrency >= 1, "--concurrency must be at least 1");
    check_fd_budget(plan.connections)?;
    let auth = Arc::new(minting_auth(plan.app.0, &plan.secret));
    let gate = Arc::new(Semaphore::new(plan.concurrency));
    let started = Instant::now();
    let mut pacer = match plan.rate {
        Some(rate) => Some(Pacer::start(Schedule::at_rate(
            rate,
            plan.connections as u64,
            started,
        ))?),
        None => None,
    };
    let mut out = Storm {
        members: Vec::with_capacity(plan.connections),
        failures: BTreeMap::new(),
        latency: Recorder::new(),
        connect_latency: Recorder::new(),
        elapsed: Duration::ZERO,
    };
    let bar = report::progress(plan.connections as u64, "connect+login");
    let mut attempts = JoinSet::new();
    for i in plan.first..plan.first + plan.connections {
        let due = match &mut pacer {
            Some(p) => Some(p.next().await.map(|s| s.due).unwrap_or_else(Instant::now)),
            None => None,
        };
        let permit = gate.clone().acquire_owned().await?;
        // Open loop: waiting for a permit is part of the login's latency.
        let t0 = due.unwrap_or_else(Instant::now);
        let (auth, target, app, limit) = (auth.clone(), plan.target, plan.app, plan.timeout);
        attempts.spawn(async move {
            let r = tokio::time::timeout(limit, connect_and_login(target, i, app, &auth)).await;
            drop(permit);
            let r = r.unwrap_or(Err(LoginFailure::Timeout));
            Attempt {
                index: i,
                result: r,
                took: t0.elapsed(),
            }
        });
        while let Some(done) = attempts.try_join_next() {
            out.absorb(done?, &bar);
        }
    }
    while let Some(done) = attempts.join_next().await {
        out.absorb(done?, &bar);
    }
    out.elapsed = started.elapsed();
    out.members.sort_by_key(|m| m.index);
    Ok(out)
}

/// One attempt's result, as its task returns it.
struct Attempt {
    index: usize,
    result: Result<LoggedIn, LoginFailure>,
    took: Duration,
}

/// A login that worked, with its TCP connect time.
pub struct LoggedIn {
    /// The logged-in connection.
    pub client: Client,
    /// How long the TCP connect took.
    pub connect: Duration,
}

impl Storm {
    fn absorb(&mut self, a: Attempt, bar: &ProgressBar) {
        match a.result {
            Ok(ok) => {
                self.latency.record(a.took);
                self.connect_latency.record(ok.connect);
                self.members.push(Member {
                    index: a.index,
                    client: ok.client,
                });
            }
            Err(f) => *self.failures.entry(f.label()).or_insert(0) += 1,
        }
        if !bar.is_hidden() {
            let failed: u64 = self.failures.values().sum();
            bar.set_message(format!("{} logged in, {failed} failed", self.members.len()));
        }
        bar.inc(1);
    }
}

/// Why one connect+login failed.
#[derive(Debug)]
pub enum LoginFailure {
    /// Nothing listens (ECONNREFUSED).
    Refused,
    /// Connect plus login took longer than the plan's timeout.
    Timeout,
    /// The server reset the connection.
    Reset,
    /// The server closed the connection before answering.
    Closed,
    /// The server answered ERROR with this code.
    Server(u32),
    /// The server kicked the session out during login.
    Kicked(i32),
    /// Any other socket or protocol failure.
    Other(String),
}

impl LoginFailure {
    /// The report's key: `refused`, `timeout`, `reset`, `closed`,
    /// `auth_failed` (the error code's name), `kicked_<reason>`, or `other: ...`.
    pub fn label(&self) -> String {
        match self {
            LoginFailure::Refused => "refused".into(),
            LoginFailure::Timeout => "timeout".into(),
            LoginFailure::Reset => "reset".into(),
            LoginFailure::Closed => "closed".into(),
            LoginFailure::Server(code) => error_label(*code),
            LoginFailure::Kicked(reason) => format!("kicked_{reason}"),
            LoginFailure::Other(e) => format!("other: {e}"),
        }
    }

    fn from_io(e: &std::io::Error) -> LoginFailure {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused => LoginFailure::Refused,
            ConnectionReset | ConnectionAborted | BrokenPipe => LoginFailure::Reset,
            TimedOut => LoginFailure::Timeout,
            _ => LoginFailure::Other(e.to_string()),
        }
    }
}

/// The name of a protocol ERROR code (`throttled`), or `code_<n>` for one
/// this build does not know.
pub fn error_label(code: u32) -> String {
    ErrorCode::from_u32(code).map_or_else(|| format!("code_{code}"), |c| c.name().to_string())
}

/// Connects fleet client `i` from its source address and logs it in.
pub async fn connect_and_login(
    target: SocketAddr,
    i: usize,
    app: AppCode,
    auth: &Auth,
) -> Result<LoggedIn, LoginFailure> {
    let t0 = Instant::now();
    let stream = sources::connect(target, i).await.map_err(|e| {
        e.downcast_ref::<std::io::Error>()
            .map_or_else(|| LoginFailure::Other(e.to_string()), LoginFailure::from_io)
    })?;
    let connect = t0.elapsed();
    let mut client = Client::from_stream(stream).map_err(client_failure)?;
    let token = auth
        .mint(app, &uid(i), 3600)
        .map_err(|e| LoginFailure::Other(format!("token: {e}")))?;
    client
        .login(app, &token, &format!("dev-{i}"), "bench")
        .await
        .map_err(client_failure)?;
    Ok(LoggedIn { client, connect })
}

fn client_failure(e: ClientError) -> LoginFailure {
    match e {
        ClientError::Io(e) => LoginFailure::from_io(&e),
        ClientError::Closed => LoginFailure::Closed,
        ClientError::Server { code, .. } => LoginFailure::Server(code),
        ClientError::Kicked { reason, .. } => LoginFailure::Kicked(reason),
        ClientError::Decode(e) => LoginFailure::Other(format!("decode: {e}")),
    }
}

/// Token minting for the bench's clients: the app's secret, nothing else.
pub fn minting_auth(app: u16, secret: &str) -> Auth {
    let app = AppConfig {
        code: app,
        name: String::new(),
        secrets: vec![secret.to_string()],
        api_key: String::new(),
        c2s_max_len: None,
        offline_max_len: None,
        device_policy: Default::default(),
        c2s_webhook: None,
    };
    Auth::new(&[app], 0)
}

/// Refuses a run that would exceed this process's descriptor limit.
pub fn check_fd_budget(descriptors: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        anyhow::ensure!(
            descriptors + 64 <= soft,
            "{descriptors} connections need more descriptors than this process may open ({soft}); \
             use fewer connections per bench process"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_labelled_by_reason() {
        assert_eq!(LoginFailure::Server(3).label(), "auth_failed");
        assert_eq!(LoginFailure::Server(99).label(), "code_99");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(LoginFailure::from_io(&refused).label(), "refused");
    }

    #[tokio::test]
    async fn a_storm_against_nothing_counts_refusals() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let plan = StormPlan {
            first: 0,
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            connections: 5,
            app: AppCode(1),
            secret: "tidegate-dev-secret-app-1".into(),
            concurrency: 2,
            rate: Some(1000.0),
            timeout: Duration::from_secs(2),
        };
        let s = storm(&plan).await.unwrap();
        assert!(s.members.is_empty());
        assert_eq!(s.failures.get("refused"), Some(&5), "{:?}", s.failures);
    }
}
