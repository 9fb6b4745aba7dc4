//! Opening a bus: check that the group can be joined on the interface (and that raw PGM is
//! permitted) before libzmq tries, then the PGM socket with rate, recovery and hops set.
//!
//! The check matters: libzmq 4.3.4 creates the PGM transport in its I/O thread and asserts
//! (aborting the whole process) when that fails, e.g. raw `pgm://` without CAP_NET_RAW.
#![allow(unsafe_code)]

use std::net::UdpSocket;
use std::os::raw::c_int;

use crate::config::BusConfig;
use crate::endpoint::{PgmEndpoint, Transport};

/// Linger of bus sockets: bounded, so shutdown never hangs on unsent data.
const LINGER_MS: i32 = 500;
/// Messages the bus sender queues before a send waits for the PGM rate.
pub const SEND_HWM: i32 = 100_000;
/// Messages a bus receiver queues before libzmq stops reading the group.
pub const RECEIVE_HWM: i32 = 100_000;
/// Kernel socket buffers asked for (capped by net.core.rmem_max / wmem_max): at 1 Gbit/s the
/// default 208 KiB overflows within 2 ms, and every overflow costs a NAK and repair round.
const SOCKET_BUFFER: i32 = 16 << 20;
/// IP protocol number of PGM.
const IPPROTO_PGM: c_int = 113;

/// Why a bus could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The endpoint does not parse (config validation normally catches this first).
    #[error("{0}")]
    Endpoint(String),
    /// The group cannot be joined on the interface.
    #[error("cannot join group {group} on interface {interface}: {source} (is {interface} an address of this host, with multicast on: `ip link set DEV multicast on`?)")]
    Join {
        /// The group.
        group: std::net::Ipv4Addr,
        /// The interface address.
        interface: std::net::Ipv4Addr,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// Raw PGM sockets are not permitted.
    #[error("raw pgm:// needs root or CAP_NET_RAW ({0}); use epgm:// (PGM over UDP) otherwise")]
    RawNotPermitted(std::io::Error),
    /// libzmq refused a socket, an option or the endpoint.
    #[error("libzmq: {0}")]
    Zmq(#[from] zmq::Error),
}

/// Checks what libzmq would otherwise assert on: the group join, and raw socket permission.
pub fn probe(endpoint: &PgmEndpoint) -> Result<(), OpenError> {
    let join_error = |source| OpenError::Join {
        group: endpoint.group,
        interface: endpoint.interface,
        source,
    };
    let socket = UdpSocket::bind(("0.0.0.0", 0)).map_err(join_error)?;
    socket
        .join_multicast_v4(&endpoint.group, &endpoint.interface)
        .map_err(join_error)?;
    drop(socket);
    if endpoint.transport == Transport::Pgm {
        // SAFETY: plain socket(2) and close(2) on a descriptor this function owns.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_PGM) };
        if fd < 0 {
            return Err(OpenError::RawNotPermitted(std::io::Error::last_os_error()));
        }
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn pgm_options(socket: &mut zmq::Socket, bus: &BusConfig) -> zmq::Result<()> {
    depot_common::sockopt::set_multicast_maxtpdu(
        socket,
        i32::try_from(bus.max_tpdu).unwrap_or(i32::MAX),
    )?;
    socket.set_linger(LINGER_MS)?;
    socket.set_rate(i32::try_from(bus.rate_kbps).unwrap_or(i32::MAX))?;
    socket.set_recovery_ivl(i32::try_from(bus.recovery_ms).unwrap_or(i32::MAX))?;
    socket.set_multicast_hops(i32::from(bus.hops))?;
    socket.set_sndbuf(SOCKET_BUFFER)?;
    socket.set_rcvbuf(SOCKET_BUFFER)
}

/// The sending side of a bus: an XPUB connected to the group. With `ZMQ_XPUB_NODROP` a full
/// queue makes the send wait for the PGM rate instead of dropping silently as a PUB does.
pub fn sender(ctx: &zmq::Context, bus: &BusConfig) -> Result<zmq::Socket, OpenError> {
    let endpoint = PgmEndpoint::parse(&bus.endpoint).map_err(OpenError::Endpoint)?;
    probe(&endpoint)?;
    let mut socket = ctx.socket(zmq::XPUB)?;
    pgm_options(&mut socket, bus)?;
    socket.set_sndhwm(SEND_HWM)?;
    depot_common::sockopt::set_xpub_nodrop(&mut socket, true)?;
    socket.connect(&endpoint.to_zmq())?;
    Ok(socket)
}

/// The receiving side of a bus: a SUB joined to the group, subscribed to `prefixes`.
pub fn receiver(
    ctx: &zmq::Context,
    bus: &BusConfig,
    prefixes: &[&[u8]],
) -> Result<zmq::Socket, OpenError> {
    let endpoint = PgmEndpoint::parse(&bus.endpoint).map_err(OpenError::Endpoint)?;
    probe(&endpoint)?;
    let mut socket = ctx.socket(zmq::SUB)?;
    pgm_options(&mut socket, bus)?;
    socket.set_rcvhwm(RECEIVE_HWM)?;
    for prefix in prefixes {
        socket.set_subscribe(prefix)?;
    }
    socket.connect(&endpoint.to_zmq())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_of_no_local_interface_cannot_be_joined() {
        let endpoint = PgmEndpoint::parse("epgm://192.0.2.77;239.192.9.9:5555").unwrap();
        let err = probe(&endpoint).unwrap_err().to_string();
        assert!(
            err.contains("cannot join group 239.192.9.9 on interface 192.0.2.77"),
            "{err}"
        );
    }
}
