//! The ports the gate protects, as written (`tcp/9200`, `udp/5000-5010`, `tcp/all`,
//! `all`), and the ports it must leave open: where replies to the host's own traffic
//! arrive.

use rewrite_common::{gate::port_slot, ports::PortRange, protocol::Protocol};

use crate::{dataplane::host, gate::GateError};

/// UDP ports where replies to this host's own clients of fixed-port protocols arrive:
/// DHCP (68), NTP (123: ntpd and chrony send from it and the server answers to it) and
/// DHCPv6 (546). `all` leaves them out; naming one protects it, as the operator says.
pub const CLIENT_UDP_PORTS: [u16; 3] = [68, 123, 546];

/// The ports where replies to this host's own traffic arrive, which the gate must not
/// close: its ephemeral range (both protocols), bounce mode's source port ranges (per
/// protocol), and the fixed UDP client ports. `all` leaves them all out; a named port
/// inside the ephemeral range or a bounce range is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPorts {
    pub ephemeral: PortRange,
    pub bounce: Vec<(Protocol, PortRange)>,
}

impl ClientPorts {
    /// This host's: its ephemeral range, and `bounce`, the source port ranges of the
    /// bounce services the gate must leave open (those of the live services, or of the
    /// ones a config being applied has).
    pub fn of_host(bounce: Vec<(Protocol, PortRange)>) -> Result<Self, GateError> {
        Ok(Self { ephemeral: host::ephemeral_range()?, bounce })
    }

    /// Whether `all` leaves `port` of `protocol` out.
    fn left_out(&self, protocol: Protocol, port: u16) -> bool {
        self.ephemeral.contains(port)
            || (protocol == Protocol::Udp && CLIENT_UDP_PORTS.contains(&port))
            || self.bounce.iter().any(|(bounced, range)| *bounced == protocol && range.contains(port))
    }

    /// Why a named `port` of `protocol` may not be protected, if it may not.
    fn refusal(&self, protocol: Protocol, port: u16) -> Option<GateError> {
        if self.ephemeral.contains(port) {
            return Some(GateError::EphemeralPort { protocol, port, range: self.ephemeral });
        }
        self.bounce
            .iter()
            .find(|(bounced, range)| *bounced == protocol && range.contains(port))
            .map(|(_, range)| GateError::BounceRange { protocol, port, range: *range })
    }
}

/// TCP or UDP ports: `tcp/9200`, `udp/5000-5010`, `tcp/all`, or `all` (both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// TCP, UDP, or both.
    pub protocols: Vec<Protocol>,
    /// `None`: every port but the ones replies arrive at ([`ClientPorts`]).
    pub ports: Option<PortRange>,
}

impl PortSpec {
    pub fn parse(text: &str) -> Result<Self, GateError> {
        let bad = || GateError::BadPorts { text: text.to_owned() };
        if text == "all" {
            return Ok(Self { protocols: Protocol::BOTH.to_vec(), ports: None });
        }
        let (protocol, ports) = text.split_once('/').ok_or_else(bad)?;
        let protocol = Protocol::from_name(protocol).ok_or_else(bad)?;
        let ports = match ports {
            "all" => None,
            range => Some(range.parse::<PortRange>().map_err(|_| bad())?),
        };
        Ok(Self { protocols: vec![protocol], ports })
    }

    /// Every (protocol, port) the spec names. `all` leaves out the host's client ports;
    /// a named port among those that must stay open is an error.
    pub(crate) fn slots(&self, client: &ClientPorts) -> Result<Vec<(Protocol, u16)>, GateError> {
        let mut slots = Vec::new();
        for &protocol in &self.protocols {
            match self.ports {
                None => slots.extend(
                    (0..=u16::MAX).filter(|port| !client.left_out(protocol, *port)).map(|port| (protocol, port)),
                ),
                Some(ports) => {
                    if let Some(refusal) = ports.ports().find_map(|port| client.refusal(protocol, port)) {
                        return Err(refusal);
                    }
                    slots.extend(ports.ports().map(|port| (protocol, port)));
                }
            }
        }
        Ok(slots)
    }
}

/// The slot of (`protocol`, `port`) in the port map.
pub(crate) fn slot(protocol: Protocol, port: u16) -> u32 {
    port_slot(protocol.number(), port).unwrap_or(0)
}

/// The (protocol, port) pairs whose slot in `bits` (the whole port map) has `bit`.
pub(crate) fn ports_with(bits: &[u32], bit: u32) -> Vec<(Protocol, u16)> {
    Protocol::BOTH
        .into_iter()
        .flat_map(|protocol| (0..=u16::MAX).map(move |port| (protocol, port)))
        .filter(|&(protocol, port)| bits.get(slot(protocol, port) as usize).is_some_and(|value| value & bit != 0))
        .collect()
}

/// Sorted (protocol, port) pairs as `tcp/22`, `udp/5000-5010`, ... runs.
pub(crate) fn compress(ports: &[(Protocol, u16)]) -> Vec<String> {
    let mut runs: Vec<(Protocol, PortRange)> = Vec::new();
    for &(protocol, port) in ports {
        match runs.last_mut() {
            Some((last_protocol, range))
                if *last_protocol == protocol && u32::from(range.last()) + 1 == u32::from(port) =>
            {
                *range = PortRange::new(range.first(), port).unwrap_or(*range);
            }
            _ => runs.push((protocol, PortRange::single(port))),
        }
    }
    runs.into_iter().map(|(protocol, range)| format!("{protocol}/{range}")).collect()
}

#[cfg(test)]
mod tests {
    use rewrite_common::gate::{PORT_MANAGEMENT, PORT_PROTECTED, PORT_SLOTS};

    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange::new(first, last).expect("a range")
    }

    #[test]
    fn port_specs_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(
            PortSpec::parse("tcp/9200").expect("valid"),
            PortSpec { protocols: vec![Protocol::Tcp], ports: Some(PortRange::single(9200)) }
        );
        assert_eq!(PortSpec::parse("udp/5000-5010").expect("valid").ports, Some(range(5000, 5010)));
        assert_eq!(
            PortSpec::parse("all").expect("valid"),
            PortSpec { protocols: Protocol::BOTH.to_vec(), ports: None }
        );
        for bad in ["tcp", "icmp/1", "tcp/70000", "tcp/10-5", "tcp/x", ""] {
            let error = PortSpec::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("PROTO/PORT"), "{bad}: {error}");
        }
    }

    #[test]
    fn all_leaves_out_the_ephemeral_range_and_a_named_port_there_is_refused() {
        let client = ClientPorts { ephemeral: range(32768, 60999), bounce: Vec::new() };
        let all = PortSpec::parse("tcp/all").expect("valid").slots(&client).expect("slots");
        assert_eq!(all.len(), 65536 - (60999 - 32768 + 1));
        assert!(all.iter().all(|(_, port)| !client.ephemeral.contains(*port)));
        let error = PortSpec::parse("udp/40000").expect("valid").slots(&client).expect_err("ephemeral").to_string();
        assert!(error.contains("udp/40000") && error.contains("32768-60999"), "{error}");
    }

    #[test]
    fn all_leaves_out_client_ports_and_bounce_ranges() {
        let client = ClientPorts { ephemeral: range(32768, 60999), bounce: vec![(Protocol::Tcp, range(61000, 65535))] };
        let all = PortSpec::parse("all").expect("valid").slots(&client).expect("slots");
        for port in CLIENT_UDP_PORTS {
            assert!(!all.contains(&(Protocol::Udp, port)), "udp/{port}: replies to this host's DHCP, NTP and DHCPv6");
            assert!(all.contains(&(Protocol::Tcp, port)), "tcp/{port} is no client port");
        }
        assert!(!all.iter().any(|&(protocol, port)| protocol == Protocol::Tcp && port >= 61000), "bounce's TCP range");
        assert!(all.contains(&(Protocol::Udp, 61000)), "bounce's range is TCP only here");
        let error = PortSpec::parse("tcp/62000").expect("valid").slots(&client).expect_err("bounce range").to_string();
        assert!(error.contains("tcp/62000") && error.contains("61000-65535") && error.contains("bounce"), "{error}");
        assert!(PortSpec::parse("udp/123").expect("valid").slots(&client).is_ok(), "named, a client port is protected");
    }

    #[test]
    fn port_classes_read_back_in_runs() {
        let (tcp, udp) = (Protocol::Tcp, Protocol::Udp);
        assert_eq!(
            compress(&[(tcp, 22), (tcp, 23), (tcp, 24), (udp, 25), (udp, 53)]),
            ["tcp/22-24", "udp/25", "udp/53"]
        );
        let mut bits = vec![0u32; PORT_SLOTS as usize];
        bits[22] = PORT_PROTECTED | PORT_MANAGEMENT;
        bits[65_536 + 53] = PORT_PROTECTED;
        assert_eq!(ports_with(&bits, PORT_PROTECTED), [(tcp, 22), (udp, 53)]);
        assert_eq!(ports_with(&bits, PORT_MANAGEMENT), [(tcp, 22)]);
    }
}
