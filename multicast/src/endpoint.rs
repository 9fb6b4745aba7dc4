//! PGM/EPGM endpoints: `epgm://<interface IPv4>;<group>:<port>` (PGM over UDP) or `pgm://...`
//! (raw PGM, needs CAP_NET_RAW), parsed and checked before libzmq sees them.

use std::net::Ipv4Addr;

/// Which PGM transport a bus uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// PGM encapsulated in UDP: no privileges needed.
    Epgm,
    /// Raw PGM (IP protocol 113): needs root or CAP_NET_RAW.
    Pgm,
}

/// A parsed bus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgmEndpoint {
    /// `pgm` or `epgm`.
    pub transport: Transport,
    /// Address of the local interface the group is joined on.
    pub interface: Ipv4Addr,
    /// The multicast group (224.0.0.0/4).
    pub group: Ipv4Addr,
    /// The data port.
    pub port: u16,
}

impl PgmEndpoint {
    /// Parses and checks `text`; the error says what is wrong and how to write it.
    pub fn parse(text: &str) -> Result<PgmEndpoint, String> {
        const FORM: &str = "write it as epgm://<interface IPv4>;<group>:<port>, e.g. epgm://127.0.0.1;239.192.1.1:5555 (or pgm:// for raw PGM)";
        let (transport, rest) = if let Some(rest) = text.strip_prefix("epgm://") {
            (Transport::Epgm, rest)
        } else if let Some(rest) = text.strip_prefix("pgm://") {
            (Transport::Pgm, rest)
        } else {
            return Err(format!(
                "endpoint {text:?} is not pgm:// or epgm://; {FORM}"
            ));
        };
        let (interface, group_port) = rest
            .split_once(';')
            .ok_or_else(|| format!("endpoint {text:?} names no interface; {FORM}"))?;
        let interface: Ipv4Addr = interface.parse().map_err(|_| {
            format!(
                "endpoint {text:?}: interface {interface:?} is not an IPv4 address (OpenPGM rejects interface names such as lo); {FORM}"
            )
        })?;
        if interface.is_unspecified() || interface.is_multicast() || interface.is_broadcast() {
            return Err(format!(
                "endpoint {text:?}: interface {interface} is not the address of an interface; {FORM}"
            ));
        }
        let (group, port) = group_port
            .rsplit_once(':')
            .ok_or_else(|| format!("endpoint {text:?} has no port; {FORM}"))?;
        let group: Ipv4Addr = group.parse().map_err(|_| {
            format!("endpoint {text:?}: group {group:?} is not an IPv4 address; {FORM}")
        })?;
        if !group.is_multicast() {
            return Err(format!(
                "endpoint {text:?}: group {group} is not a multicast address (224.0.0.0 to 239.255.255.255; 239.192.0.0/14 is for local use)"
            ));
        }
        let port: u16 = match port.parse() {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "endpoint {text:?}: port {port:?} is not a number from 1 to 65535"
                ))
            }
            Ok(port) => port,
        };
        Ok(PgmEndpoint {
            transport,
            interface,
            group,
            port,
        })
    }

    /// The endpoint as libzmq takes it.
    pub fn to_zmq(&self) -> String {
        let scheme = match self.transport {
            Transport::Epgm => "epgm",
            Transport::Pgm => "pgm",
        };
        format!("{scheme}://{};{}:{}", self.interface, self.group, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_epgm_and_pgm() {
        let e = PgmEndpoint::parse("epgm://127.0.0.1;239.192.1.1:5555").unwrap();
        assert_eq!(e.transport, Transport::Epgm);
        assert_eq!(e.interface, Ipv4Addr::LOCALHOST);
        assert_eq!(e.group, Ipv4Addr::new(239, 192, 1, 1));
        assert_eq!(e.port, 5555);
        assert_eq!(e.to_zmq(), "epgm://127.0.0.1;239.192.1.1:5555");
        let p = PgmEndpoint::parse("pgm://10.0.0.2;224.0.1.9:7000").unwrap();
        assert_eq!(p.transport, Transport::Pgm);
    }

    #[test]
    fn refuses_bad_endpoints_saying_why() {
        let cases = [
            ("tcp://127.0.0.1:5555", "not pgm:// or epgm://"),
            ("epgm://239.192.1.1:5555", "names no interface"),
            ("epgm://lo;239.192.1.1:5555", "interface names such as lo"),
            (
                "epgm://0.0.0.0;239.192.1.1:5555",
                "not the address of an interface",
            ),
            ("epgm://127.0.0.1;10.1.1.1:5555", "not a multicast address"),
            ("epgm://127.0.0.1;239.192.1:5555", "not an IPv4 address"),
            ("epgm://127.0.0.1;239.192.1.1", "has no port"),
            ("epgm://127.0.0.1;239.192.1.1:0", "from 1 to 65535"),
            ("epgm://127.0.0.1;239.192.1.1:70000", "from 1 to 65535"),
        ];
        for (text, why) in cases {
            let err = PgmEndpoint::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
