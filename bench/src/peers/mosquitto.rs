//! Mosquitto's side of a peer run: the Debian broker started on a free
//! loopback port with a generated config, N MQTT 3.1.1 clients CONNECTed
//! and SUBSCRIBEd to one topic, and fan-out by PUBLISHing to that topic.

use super::fanout::{self, Subscriber};
use super::process::{self, Server};
use super::{measure_side, Plan, Sent, SideReport};
use crate::mqtt::client::{ClientError, MqttClient};
use crate::mqtt::{Connect, Packet, QoS};
use crate::{sources, Recorder};
use anyhow::Context;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The topic every subscriber listens on.
const TOPIC: &str = "tidegate/bench/fanout";
/// How long the broker may take to answer its first PINGREQ.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker this run started; stopped when dropped.
pub struct Mosquitto {
    server: Server,
    /// Its MQTT listener.
    pub addr: SocketAddr,
    /// `mosquitto version X` as the binary reports it.
    pub version: String,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// The broker binary: `explicit`, else `mosquitto` on PATH or in /usr/sbin.
    pub fn binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
        match explicit {
            Some(p) => Ok(p.to_path_buf()),
            None => process::find_program("mosquitto").context(
                "mosquitto not found: apt-get install -y mosquitto (tests/run installs it when run as root)",
            ),
        }
    }

    /// Starts `bin` on a free loopback port and waits until it serves MQTT.
    pub async fn start(bin: &Path) -> anyhow::Result<Mosquitto> {
        let version = version_of(bin)?;
        let spawn = |port: u16, dir: &Path| {
            let conf = dir.join("mosquitto.conf");
            std::fs::write(&conf, config(port)).context("writing mosquitto.conf")?;
            let mut cmd = Command::new(bin);
            cmd.arg("-c").arg(&conf);
            Server::spawn(cmd, &dir.join("mosquitto.log"))
        };
        let started = process::start_on_free_port("mosquitto", START_TIMEOUT, spawn, probe).await?;
        Ok(Mosquitto {
            server: started.server,
            addr: started.addr,
            version,
            _dir: started.dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }
}

/// The broker's config: loopback only, no connection cap, no persistence,
/// anonymous clients, log to stderr (which bench keeps in a file: a log
/// file of our own would be unwritable after the broker drops root), and
/// tuned for this workload where a default would only slow it.
fn config(port: u16) -> String {
    format!(
        "# written by tidegate bench peers\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         max_connections -1\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         connection_messages false\n\
         # Tidegate's gateway sets TCP_NODELAY too; Nagle would add delayed-ACK\n\
         # stalls to the broker's small writes and skew the p99 against it.\n\
         set_tcp_nodelay true\n\
         # 2.0.11 still defaults to false for MQTT 3.1.1 clients: every delivery\n\
         # then scans the ids of all clients the message already reached\n\
         # (strcmp in db__message_insert, O(N) per delivery; perf: about half the\n\
         # broker's CPU at 10k subscribers). No subscriber here has overlapping\n\
         # subscriptions, so the check is pure cost: the peer runs at its best.\n\
         allow_duplicate_messages true\n"
    )
}

/// `mosquitto version 2.0.11` from `bin -h`.
fn version_of(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("-h")
        .output()
        .with_context(|| format!("running {} -h", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("mosquitto version"))
        .map(str::to_string)
        .with_context(|| format!("{} -h printed no version", bin.display()))
}

/// CONNECT, PINGREQ/PINGRESP, DISCONNECT: the broker serves MQTT.
async fn probe(addr: SocketAddr) -> Result<(), ClientError> {
    let stream = TcpStream::connect(addr).await?;
    let mut c = MqttClient::connect(stream, hello("bench-probe".into())).await?;
    c.ping().await?;
    c.disconnect().await
}

fn hello(client_id: String) -> Connect {
    // No keepalive timer: a run is bounded by its own deadline, and the
    // broker's keepalive bookkeeping is the same either way.
    Connect {
        client_id,
        keep_alive_s: 0,
        clean_session: true,
    }
}

impl Subscriber for MqttClient<TcpStream> {
    async fn next_payload(&mut self) -> Result<Bytes, String> {
        match self.recv_publish().await {
            Ok(p) => Ok(p.payload),
            Err(ClientError::Closed) => Err("closed".into()),
            Err(e) => Err(format!("receive: {e}")),
        }
    }
}

/// Connects subscriber `i` from its source address and subscribes it.
async fn subscriber(addr: SocketAddr, i: usize) -> Result<MqttClient<TcpStream>, String> {
    let stream = sources::connect(addr, i)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("connect: {e}"))?;
    let mut c = MqttClient::connect(stream, hello(format!("bench-{i}")))
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    c.subscribe(TOPIC, QoS::AtMostOnce)
        .await
        .map_err(|e| format!("SUBSCRIBE: {e}"))?;
    Ok(c)
}

/// Measures the broker at `addr`: idle memory with `plan.connections`
/// subscribers, then `plan.messages` publishes to all of them. The
/// publisher sends QoS 1 so that, like Tidegate's HTTP answer, the broker
/// says when it has taken each message (at most `plan.in_flight` open);
/// subscribers get QoS 0, as Tidegate's clients do.
pub async fn measure(
    addr: SocketAddr,
    pid: Option<u32>,
    plan: &Plan,
    name: String,
) -> anyhow::Result<SideReport> {
    let open = move |i| subscriber(addr, i);
    let send = move |epoch: Instant, plan: Plan| async move {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut publisher = MqttClient::connect(stream, hello("bench-publisher".into())).await?;
        let mut waiting: HashMap<u16, Instant> = HashMap::new();
        let mut latency = Recorder::new();
        let mut next = 0u32;
        let started = Instant::now();
        while (next as usize) < plan.messages || !waiting.is_empty() {
            if (next as usize) < plan.messages && waiting.len() < plan.in_flight {
                let payload = fanout::stamp(epoch, next, plan.payload_bytes);
                let t0 = Instant::now();
                let id = publisher
                    .publish(TOPIC, QoS::AtLeastOnce, payload)
                    .await?
                    .context("a QoS 1 publish has a packet identifier")?;
                waiting.insert(id, t0);
                next += 1;
                continue;
            }
            match publisher.recv().await? {
                Packet::PubAck(id) => {
                    let t0 = waiting.remove(&id).context("PUBACK for no publish")?;
                    latency.record(t0.elapsed());
                }
                _ => anyhow::bail!("the publisher received a message it did not subscribe to"),
            }
        }
        anyhow::Ok(Sent { started, latency })
    };
    measure_side(name, pid, plan, open, send).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_loopback_without_caps() {
        let c = config(4242);
        assert!(c.contains("listener 4242 127.0.0.1\n"));
        assert!(c.contains("max_connections -1\n"));
        assert!(c.contains("persistence false\n"));
        assert!(c.contains("allow_anonymous true\n"));
        assert!(c.contains("allow_duplicate_messages true\n"));
    }
}
