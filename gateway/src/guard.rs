//! The guard: who may connect and who may log in. Black/white lists (IP/CIDR,
//! appcode, uid) from a file re-read when it changes and from the admin API,
//! temporary bans for IPs that keep misbehaving, per-IP connection caps and
//! connect-flapping detection (ARCHITECTURE §6).
//!
//! One guard serves every shard of a gate process, behind locks: it is
//! consulted once per accept and once per login, never per frame, and a
//! per-IP cap must see the IP's connections on all shards (SO_REUSEPORT
//! spreads one IP's connections over them). Lock hold times are a map lookup.

use crate::config::GuardConfig;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// The lists as written in the lists file and returned by the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListSpec {
    /// IPs or CIDRs refused at accept.
    pub deny_ips: Vec<String>,
    /// IPs or CIDRs never refused, capped or banned (operators, probes).
    pub allow_ips: Vec<String>,
    /// App codes refused at login.
    pub deny_apps: Vec<u16>,
    /// `app:uid` pairs refused at login.
    pub deny_uids: Vec<String>,
}

/// One of the four lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// `deny_ips`.
    DenyIps,
    /// `allow_ips`.
    AllowIps,
    /// `deny_apps`.
    DenyApps,
    /// `deny_uids`.
    DenyUids,
}

/// A list entry or file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ListError(pub String);

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// On the deny list.
    Denied,
    /// Temporarily banned.
    Banned,
    /// Over the per-IP connection cap.
    IpCap,
    /// Connecting too often.
    Flapping,
}

impl Reject {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Denied => "ip_denied",
            Reject::Banned => "ip_banned",
            Reject::IpCap => "ip_cap",
            Reject::Flapping => "flapping",
        }
    }
}

/// Lists compiled for lookups.
#[derive(Default)]
struct Lists {
    deny_ips: Vec<IpNet>,
    allow_ips: Vec<IpNet>,
    deny_apps: HashSet<u16>,
    deny_uids: HashSet<(u16, String)>,
}

impl Lists {
    fn compile(specs: &[&ListSpec]) -> Result<Lists, ListError> {
        let mut l = Lists::default();
        for spec in specs {
            for ip in &spec.deny_ips {
                l.deny_ips.push(parse_net(ip)?);
            }
            for ip in &spec.allow_ips {
                l.allow_ips.push(parse_net(ip)?);
            }
            l.deny_apps.extend(spec.deny_apps.iter().copied());
            for u in &spec.deny_uids {
                l.deny_uids.insert(parse_uid(u)?);
            }
        }
        Ok(l)
    }
}

fn parse_net(s: &str) -> Result<IpNet, ListError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ListError(format!("{s:?} is not an IP address or CIDR")))
}

fn parse_uid(s: &str) -> Result<(u16, String), ListError> {
    let (app, uid) = s
        .split_once(':')
        .ok_or_else(|| ListError(format!("{s:?} is not app:uid")))?;
    let app = app
        .parse()
        .map_err(|_| ListError(format!("{s:?}: {app:?} is not an app code")))?;
    Ok((app, uid.to_string()))
}

/// Per-IP state; an entry exists only while the IP holds connections, is
/// banned, or has recent violations, so the map stays bounded.
#[derive(Debug, Default)]
struct IpState {
    conns: u32,
    window_start: Option<Instant>,
    violations: u32,
    banned_until: Option<Instant>,
    connect_second: Option<Instant>,
    connects: u32,
}

impl IpState {
    fn is_idle(&self, now: Instant) -> bool {
        self.conns == 0
            && self.banned_until.is_none_or(|t| t <= now)
            && self.violations == 0
            && self
                .connect_second
                .is_none_or(|t| now - t >= Duration::from_secs(1))
    }
}

struct Sources {
    file: ListSpec,
    api: ListSpec,
    file_mtime: Option<SystemTime>,
}

/// Lists, bans and caps for one gate process.
pub struct Guard {
    cfg: GuardConfig,
    sources: Mutex<Sources>,
    lists: RwLock<Lists>,
    version: AtomicU64,
    ips: Mutex<HashMap<IpAddr, IpState>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent
    // in a way that matters more than refusing all service.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    /// A guard with the lists file loaded (an unreadable file is an error
    /// at startup, and only a logged warning on later reloads).
    pub fn new(cfg: GuardConfig) -> Result<Guard, ListError> {
        let guard = Guard {
            cfg,
            sources: Mutex::new(Sources {
                file: ListSpec::default(),
                api: ListSpec::default(),
                file_mtime: None,
            }),
            lists: RwLock::new(Lists::default()),
            version: AtomicU64::new(0),
            ips: Mutex::new(HashMap::new()),
        };
        guard.reload_file()?;
        Ok(guard)
    }

    /// Bumped whenever the lists change; shards compare it to re-check sessions.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn allowed(&self, lists: &Lists, ip: IpAddr) -> bool {
        lists.allow_ips.iter().any(|n| n.contains(&ip))
    }

    /// Decides whether `ip` may open a connection; on success the
    /// connection counts against the IP until [`Guard::release`].
    pub fn admit(&self, ip: IpAddr) -> Result<(), Reject> {
        let now = Instant::now();
        {
            let lists = self.lists.read().unwrap_or_else(|p| p.into_inner());
            if self.allowed(&lists, ip) {
                lock(&self.ips).entry(ip).or_default().conns += 1;
                return Ok(());
            }
            if lists.deny_ips.iter().any(|n| n.contains(&ip)) {
                return Err(Reject::Denied);
            }
        }
        let mut ips = lock(&self.ips);
        let st = ips.entry(ip).or_default();
        if st.banned_until.is_some_and(|t| t > now) {
            return Err(Reject::Banned);
        }
        if self.cfg.max_connects_per_ip_per_s != 0 {
            if st
                .connect_second
                .is_none_or(|t| now - t >= Duration::from_secs(1))
            {
                st.connect_second = Some(now);
                st.connects = 0;
            }
            st.connects += 1;
            if st.connects > self.cfg.max_connects_per_ip_per_s {
                drop(ips);
                self.violation(ip, "flapping");
                return Err(Reject::Flapping);
            }
        }
        if self.cfg.max_conns_per_ip != 0 && st.conns >= self.cfg.max_conns_per_ip {
            return Err(Reject::IpCap);
        }
        st.conns += 1;
        Ok(())
    }

    /// A connection admitted for `ip` closed.
    pub fn release(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut ips = lock(&self.ips);
        if let Some(st) = ips.get_mut(&ip) {
            st.conns = st.conns.saturating_sub(1);
            if st.is_idle(now) {
                ips.remove(&ip);
            }
        }
    }

    /// Records misbehaviour by `ip`; enough of it within the window bans
    /// the IP for `ban_s`. Allowed IPs are never banned.
    pub fn violation(&self, ip: IpAddr, kind: &'static str) {
        metrics::counter!("tidegate_gateway_violations_total", "kind" => kind).increment(1);
        {
            let lists = self.lists.read().unwrap_or_else(|p| p.into_inner());
            if self.allowed(&lists, ip) {
                return;
            }
        }
        let now = Instant::now();
        let window = Duration::from_secs(u64::from(self.cfg.ban_window_s));
        let mut ips = lock(&self.ips);
        let st = ips.entry(ip).or_default();
        if st.window_start.is_none_or(|t| now - t >= window) {
            st.window_start = Some(now);
            st.violations = 0;
        }
        st.violations += 1;
        if self.cfg.ban_after_violations != 0 && st.violations >= self.cfg.ban_after_violations {
            st.banned_until = Some(now + Duration::from_secs(u64::from(self.cfg.ban_s)));
            st.violations = 0;
            metrics::counter!("tidegate_gateway_bans_total", "kind" => kind).increment(1);
            tracing::warn!(%ip, kind, ban_s = self.cfg.ban_s, "temporarily banned");
        }
    }

    /// Whether logins to `app` are refused.
    pub fn app_denied(&self, app: u16) -> bool {
        let lists = self.lists.read().unwrap_or_else(|p| p.into_inner());
        lists.deny_apps.contains(&app)
    }

    /// Whether `uid` of `app` is refused.
    pub fn uid_denied(&self, app: u16, uid: &str) -> bool {
        let lists = self.lists.read().unwrap_or_else(|p| p.into_inner());
        !lists.deny_uids.is_empty() && lists.deny_uids.contains(&(app, uid.to_string()))
    }

    /// Drops expired bans and idle entries; called about once a second.
    pub fn sweep(&self) {
        let now = Instant::now();
        let window = Duration::from_secs(u64::from(self.cfg.ban_window_s));
        let mut ips = lock(&self.ips);
        for st in ips.values_mut() {
            if st.banned_until.is_some_and(|t| t <= now) {
                st.banned_until = None;
            }
            if st.window_start.is_some_and(|t| now - t >= window) {
                st.window_start = None;
                st.violations = 0;
            }
        }
        ips.retain(|_, st| !st.is_idle(now));
        metrics::gauge!("tidegate_gateway_banned_ips")
            .set(ips.values().filter(|s| s.banned_until.is_some()).count() as f64);
    }

    /// Lifts a temporary ban; false if `ip` was not banned.
    pub fn unban(&self, ip: IpAddr) -> bool {
        let mut ips = lock(&self.ips);
        ips.get_mut(&ip)
            .and_then(|st| st.banned_until.take())
            .is_some_and(|t| t > Instant::now())
    }

    /// Currently banned IPs with seconds left.
    pub fn bans(&self) -> Vec<(IpAddr, u64)> {
        let now = Instant::now();
        lock(&self.ips)
            .iter()
            .filter_map(|(ip, st)| {
                let t = st.banned_until.filter(|t| *t > now)?;
                Some((*ip, (t - now).as_secs() + 1))
            })
            .collect()
    }

    /// The file's and the API's lists.
    pub fn specs(&self) -> (ListSpec, ListSpec) {
        let s = lock(&self.sources);
        (s.file.clone(), s.api.clone())
    }

    /// Adds an entry through the API (kept until restart; put permanent
    /// entries in the lists file).
    pub fn add(&self, kind: ListKind, value: &str) -> Result<(), ListError> {
        self.edit(|api| {
            match kind {
                ListKind::DenyIps => push_new(
                    &mut api.deny_ips,
                    parse_net(value).map(|_| value.to_string())?,
                ),
                ListKind::AllowIps => push_new(
                    &mut api.allow_ips,
                    parse_net(value).map(|_| value.to_string())?,
                ),
                ListKind::DenyApps => push_new(&mut api.deny_apps, parse_app(value)?),
                ListKind::DenyUids => push_new(
                    &mut api.deny_uids,
                    parse_uid(value).map(|_| value.to_string())?,
                ),
            }
            Ok(true)
        })
        .map(drop)
    }

    /// Removes an API entry; false if it was not there.
    pub fn remove(&self, kind: ListKind, value: &str) -> Result<bool, ListError> {
        self.edit(|api| {
            Ok(match kind {
                ListKind::DenyIps => remove_item(&mut api.deny_ips, &value.to_string()),
                ListKind::AllowIps => remove_item(&mut api.allow_ips, &value.to_string()),
                ListKind::DenyApps => remove_item(&mut api.deny_apps, &parse_app(value)?),
                ListKind::DenyUids => remove_item(&mut api.deny_uids, &value.to_string()),
            })
        })
    }

    fn edit(
        &self,
        f: impl FnOnce(&mut ListSpec) -> Result<bool, ListError>,
    ) -> Result<bool, ListError> {
        let mut sources = lock(&self.sources);
        let mut api = sources.api.clone();
        let changed = f(&mut api)?;
        if changed {
            let compiled = Lists::compile(&[&sources.file, &api])?;
            sources.api = api;
            self.install(compiled);
        }
        Ok(changed)
    }

    fn install(&self, lists: Lists) {
        *self.lists.write().unwrap_or_else(|p| p.into_inner()) = lists;
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Re-reads the lists file if it changed; true if new lists were installed.
    pub fn reload_file(&self) -> Result<bool, ListError> {
        let Some(path) = self.cfg.lists_file.as_deref() else {
            return Ok(false);
        };
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| ListError(format!("gateway.guard.lists_file {}: {e}", path.display())))?;
        let mut sources = lock(&self.sources);
        if sources.file_mtime == Some(mtime) {
            return Ok(false);
        }
        let spec = read_spec(path)?;
        let compiled = Lists::compile(&[&spec, &sources.api])
            .map_err(|e| ListError(format!("gateway.guard.lists_file {}: {e}", path.display())))?;
        sources.file = spec;
        sources.file_mtime = Some(mtime);
        self.install(compiled);
        Ok(true)
    }
}

fn read_spec(path: &Path) -> Result<ListSpec, ListError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ListError(format!("gateway.guard.lists_file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        ListError(format!(
            "gateway.guard.lists_file {}: {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })
}

fn parse_app(s: &str) -> Result<u16, ListError> {
    s.parse()
        .map_err(|_| ListError(format!("{s:?} is not an app code (0-65535)")))
}

fn push_new<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

fn remove_item<T: PartialEq>(v: &mut Vec<T>, item: &T) -> bool {
    let before = v.len();
    v.retain(|x| x != item);
    v.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn guard(cfg: GuardConfig) -> Guard {
        Guard::new(cfg).unwrap()
    }

    #[test]
    fn deny_and_allow_lists() {
        let g = guard(GuardConfig::default());
        g.add(ListKind::DenyIps, "10.0.0.0/8").unwrap();
        assert_eq!(g.admit(ip("10.1.2.3")), Err(Reject::Denied));
        g.add(ListKind::AllowIps, "10.1.2.3").unwrap();
        assert_eq!(g.admit(ip("10.1.2.3")), Ok(()), "allow beats deny");
        assert!(g.remove(ListKind::DenyIps, "10.0.0.0/8").unwrap());
        assert_eq!(g.admit(ip("10.9.9.9")), Ok(()));
        assert!(g.add(ListKind::DenyIps, "10.0.0.0/33").is_err());
    }

    #[test]
    fn per_ip_cap_counts_and_releases() {
        let g = guard(GuardConfig {
            max_conns_per_ip: 2,
            ..GuardConfig::default()
        });
        let a = ip("192.0.2.1");
        assert!(g.admit(a).is_ok() && g.admit(a).is_ok());
        assert_eq!(g.admit(a), Err(Reject::IpCap));
        g.release(a);
        assert!(g.admit(a).is_ok());
        g.add(ListKind::AllowIps, "192.0.2.1").unwrap();
        assert!(g.admit(a).is_ok(), "allowed IPs bypass the cap");
    }

    #[test]
    fn repeated_violations_ban_until_expiry() {
        let g = guard(GuardConfig {
            ban_after_violations: 3,
            ban_s: 1,
            ..GuardConfig::default()
        });
        let a = ip("192.0.2.7");
        for _ in 0..3 {
            g.violation(a, "malformed");
        }
        assert_eq!(g.admit(a), Err(Reject::Banned));
        assert_eq!(g.bans().len(), 1);
        std::thread::sleep(Duration::from_millis(1100));
        g.sweep();
        assert!(g.admit(a).is_ok(), "ban expired");
    }

    #[test]
    fn connect_flapping_is_refused_and_earns_a_ban() {
        let g = guard(GuardConfig {
            max_connects_per_ip_per_s: 3,
            ban_after_violations: 2,
            ..GuardConfig::default()
        });
        let a = ip("192.0.2.9");
        for _ in 0..3 {
            assert!(g.admit(a).is_ok());
            g.release(a);
        }
        assert_eq!(g.admit(a), Err(Reject::Flapping));
        assert_eq!(g.admit(a), Err(Reject::Flapping));
        assert_eq!(
            g.admit(a),
            Err(Reject::Banned),
            "two flapping violations ban"
        );
    }

    #[test]
    fn uid_and_app_lists() {
        let g = guard(GuardConfig::default());
        g.add(ListKind::DenyUids, "1:mallory").unwrap();
        g.add(ListKind::DenyApps, "9").unwrap();
        assert!(g.uid_denied(1, "mallory") && !g.uid_denied(2, "mallory"));
        assert!(g.app_denied(9) && !g.app_denied(1));
        assert!(g.add(ListKind::DenyUids, "mallory").is_err());
    }

    #[test]
    fn lists_file_is_reloaded_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("tg-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lists.toml");
        std::fs::write(&path, "deny_ips = [\"192.0.2.0/24\"]\n").unwrap();
        let g = guard(GuardConfig {
            lists_file: Some(path.clone()),
            ..GuardConfig::default()
        });
        assert_eq!(g.admit(ip("192.0.2.5")), Err(Reject::Denied));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "deny_ips = []\ndeny_apps = [4]\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert!(g.reload_file().unwrap());
        assert!(g.admit(ip("192.0.2.5")).is_ok());
        assert!(g.app_denied(4));
        std::fs::write(&path, "deny_ipz = []\n").unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(2))
            .unwrap();
        let e = g.reload_file().unwrap_err().to_string();
        assert!(e.contains("deny_ipz"), "{e}");
        assert!(g.app_denied(4), "a bad file keeps the old lists");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
