//! The connection storm of a peer run, generic over the client kind: the
//! same bounded-concurrency opening for Tidegate logins and MQTT
//! CONNECT+SUBSCRIBE, so both servers face the same arrival pattern.
//! (`fleet::storm` is Tidegate-only: it paces, times out and labels
//! failures by protocol error code.)

use crate::Recorder;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The clients a connection storm opened, and what opening them took.
pub struct Storm<C> {
    /// Clients that connected (and logged in or subscribed).
    pub clients: Vec<C>,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Per-client open latency.
    pub latency: Recorder,
    /// First connect to last answer.
    pub took: Duration,
}

/// Opens `connections` clients with `open(i)`, at most `concurrency` at once.
pub async fn storm<C, F, Fut>(
    connections: usize,
    concurrency: usize,
    open: F,
) -> anyhow::Result<Storm<C>>
where
    C: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<C, String>> + Send + 'static,
{
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut opens = JoinSet::new();
    for i in 0..connections {
        let permit = gate.clone().acquire_owned().await?;
        let opening = open(i);
        opens.spawn(async move {
            let t0 = Instant::now();
            let r = opening.await;
            drop(permit);
            r.map(|c| (c, t0.elapsed()))
        });
    }
    let mut clients = Vec::with_capacity(connections);
    let mut failures = BTreeMap::new();
    let mut latency = Recorder::new();
    while let Some(r) = opens.join_next().await {
        match r? {
            Ok((c, took)) => {
                latency.record(took);
                clients.push(c);
            }
            Err(reason) => *failures.entry(reason).or_insert(0) += 1,
        }
    }
    Ok(Storm {
        clients,
        failures,
        latency,
        took: started.elapsed(),
    })
}
