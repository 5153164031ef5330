//! The Redis connection, one node or a cluster behind one type. Both are
//! multiplexed and cheap to clone; [`Conn::query_many`] sends many commands
//! in one round trip either way.

use super::{bounded, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::store::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::time::Duration;

/// URL scheme that selects Redis Cluster.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// A single node through a reconnecting manager, or a cluster connection
/// that follows the slot map (MOVED/ASK) by itself.
#[derive(Clone)]
pub enum Conn {
    /// `redis://…`
    Single(ConnectionManager),
    /// `redis+cluster://…`
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to a node URL or a `redis+cluster://h:p,h:p` seed list.
    pub async fn connect(url: &str) -> Result<Conn, StoreError> {
        let bad = |e: RedisError| StoreError::BadInput(format!("redis url {url:?}: {e}"));
        let located = |e: StoreError| match e {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!("{url}: {m}")),
            other => other,
        };
        if let Some(seeds) = url.strip_prefix(CLUSTER_SCHEME) {
            let nodes: Vec<String> = seeds
                .trim_end_matches('/')
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}/"))
                .collect();
            if nodes.is_empty() {
                return Err(StoreError::BadInput(format!(
                    "redis url {url:?} names no cluster node; use {CLUSTER_SCHEME}host:port,host:port"
                )));
            }
            let client = ClusterClientBuilder::new(nodes)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2)
                .build()
                .map_err(bad)?;
            let conn = bounded(client.get_async_connection())
                .await
                .map_err(located)?;
            return Ok(Conn::Cluster(conn));
        }
        let client = redis::Client::open(url).map_err(bad)?;
        // Few, short retries: the manager keeps reconnecting in the background
        // on later calls, and a startup against a dead server should fail fast.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = bounded(ConnectionManager::new_with_config(client, config))
            .await
            .map_err(located)?;
        Ok(Conn::Single(conn))
    }

    /// Runs `cmds` (any keys) in one round trip and returns their replies in
    /// order. One node: a pipeline. Cluster: a pipeline must stay on one
    /// slot, so the commands go out concurrently instead, and each node's
    /// multiplexed connection writes its share together.
    pub async fn query_many(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, RedisError> {
        match self {
            Conn::Single(conn) => {
                let mut pipe = Pipeline::with_capacity(cmds.len());
                for c in cmds {
                    pipe.add_command(c);
                }
                let mut conn = conn.clone();
                pipe.query_async(&mut conn).await
            }
            Conn::Cluster(conn) => {
                let calls = cmds.into_iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { c.query_async::<Value>(&mut conn).await }
                });
                futures_util::future::try_join_all(calls).await
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
