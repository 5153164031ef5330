//! Source addresses for client connections. One loopback address offers
//! ~28k ephemeral ports, and past about half of them the kernel's port
//! search slows sharply (ARCHITECTURE §7), so bench spreads connections over
//! 127.0.0.2, 127.0.0.3, … at most `PER_SOURCE` each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};

/// Connections per source address.
pub const PER_SOURCE: usize = 12_000;

/// The source address of connection number `i`.
pub fn source_for(i: usize) -> IpAddr {
    let n = 2 + (i / PER_SOURCE) as u32;
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n))
}

/// Connects to `target` from the source address of connection `i`.
/// Only loopback targets are allowed: bench never loads another host.
pub async fn connect(target: SocketAddr, i: usize) -> anyhow::Result<TcpStream> {
    anyhow::ensure!(
        target.ip().is_loopback(),
        "bench targets loopback addresses only, not {target}"
    );
    let socket = TcpSocket::new_v4()?;
    bind_address_no_port(&socket)?;
    socket.bind(SocketAddr::new(source_for(i), 0))?;
    Ok(socket.connect(target).await?)
}

/// Defers the port choice from `bind` to `connect`. Without it, binding to
/// `127.0.0.x:0` searches for a port unused by every socket bound to that
/// address, which slows as connections grow: measured, it held a 10k-login
/// storm to ~190/s with bench at 125% CPU.
pub(crate) fn bind_address_no_port(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_advance_every_per_source() {
        assert_eq!(source_for(0).to_string(), "127.0.0.2");
        assert_eq!(source_for(PER_SOURCE).to_string(), "127.0.0.3");
    }
}
