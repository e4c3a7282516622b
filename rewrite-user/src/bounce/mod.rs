//! Bounce mode's userspace side (see `rewrite_common::bounce` for the flow model): the
//! services ([`service`]) in their pinned map ([`table`]), starting bounce mode
//! ([`enable`]), a config's `[bounce]` section ([`config`], [`plan`]), the counters
//! ([`stats`]) and the connect and disconnect events ([`events`]).

pub mod config;
pub mod enable;
pub mod events;
pub mod plan;
pub mod service;
pub mod stats;
pub mod table;

use std::net::IpAddr;

use rewrite_common::{
    bounce::{DEFAULT_PORT_FIRST, DEFAULT_PORT_LAST, MAX_SERVICES},
    ports::PortRange,
    protocol::Protocol,
};

pub use self::{
    events::{Event, follow_events, log_reader_present},
    service::{ResolvedService, ServiceSpec, check_gate_leaves_open, listen_of, parse_port_range},
    stats::BounceStats,
    table::{Added, BounceTable, ServiceRow, Timeouts},
};
use crate::{
    Error,
    dataplane::{objects::bounce_enabled, pins::PinLayout},
};

/// A problem with a bounce service as given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BounceError {
    #[error("{text:?} is not ADDR:PORT/tcp or ADDR:PORT/udp (IPv6 as [ADDR]:PORT/PROTO)")]
    BadListen { text: String },
    #[error("{text:?} is not ADDR:PORT (IPv6 as [ADDR]:PORT), optionally with the listen side's /PROTO")]
    BadTarget { text: String },
    #[error("target {target} is {target_protocol}, but the listen side {listen} is {listen_protocol}")]
    ProtocolMismatch { listen: String, listen_protocol: Protocol, target: String, target_protocol: Protocol },
    #[error(
        "{what} {addr} is {family}, but the listen side {listen} is not: bounce does not translate between IPv4 and IPv6"
    )]
    FamilyMismatch { what: &'static str, addr: IpAddr, family: &'static str, listen: String },
    #[error("port 0 is not a valid {what} port")]
    PortZero { what: &'static str },
    #[error("{text:?} is not a port range FIRST-LAST or a port (1-65535, FIRST <= LAST)")]
    BadPortRange { text: String },
    #[error("no route to the target {target}: {why}")]
    NoRoute { target: IpAddr, why: String },
    #[error("no bounce service listens on {listen}")]
    NoSuchService { listen: String },
    #[error("the bounce service table is full ({MAX_SERVICES} services)")]
    ServicesFull,
    #[error(
        "IPv{version} forwarding is off (net.{sysctl} = 0): the route lookup bounce forwards with refuses to \
         forward; turn it on with `sysctl -w net.{sysctl}=1`"
    )]
    ForwardingOff { version: u8, sysctl: &'static str },
    #[error(
        "the source ports {ports} overlap this host's ephemeral port range {ephemeral} \
         (net.ipv4.ip_local_port_range): the host's own connections could take a port a flow holds; choose a range \
         outside it (the default is {DEFAULT_PORT_FIRST}-{DEFAULT_PORT_LAST})"
    )]
    EphemeralOverlap { ports: PortRange, ephemeral: PortRange },
    #[error("cannot check the source ports against this host's ephemeral range: {why}")]
    EphemeralUnknown { why: String },
    #[error(
        "{protocol}/{port}, in the source port range {ports}, is protected by the gate, which would drop the \
         target's replies there: `rewrite gate unprotect {protocol}/{ports}` first"
    )]
    GateProtected { protocol: Protocol, port: u16, ports: PortRange },
}

/// The source port ranges of the live bounce services (none while bounce mode is not in
/// use): where the targets' replies arrive, which the gate must leave open.
pub fn source_port_ranges(pins: &PinLayout) -> Result<Vec<(Protocol, PortRange)>, Error> {
    if !bounce_enabled(pins) {
        return Ok(Vec::new());
    }
    Ok(BounceTable::open(pins)?.services()?.iter().filter_map(ResolvedService::source_ports).collect())
}

#[cfg(test)]
mod tests {
    use rewrite_common::{
        bounce::{BounceEvent, FlowTuple},
        maps::{Addr, IPPROTO_TCP},
    };

    use super::*;
    use crate::dataplane::ring::Clock;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange::new(first, last).expect("a range")
    }

    #[test]
    fn listen_and_target_forms_are_parsed_and_bad_ones_say_what_is_wrong() {
        let spec = ServiceSpec::new("10.0.0.1:8080/tcp", "10.1.0.5:80", None, None).expect("valid");
        assert_eq!(spec.listen, "10.0.0.1:8080".parse().expect("an address"));
        assert_eq!(spec.protocol, Protocol::Tcp);
        assert_eq!(spec.target, "10.1.0.5:80".parse().expect("an address"));
        assert_eq!(spec.ports, range(DEFAULT_PORT_FIRST, DEFAULT_PORT_LAST));
        let v6 =
            ServiceSpec::new("[fd00::1]:53/UDP", "[fd01::5]:5353/udp", None, Some(range(62000, 62009))).expect("valid");
        assert_eq!((v6.protocol, v6.ports), (Protocol::Udp, range(62000, 62009)));

        assert_eq!(
            ServiceSpec::new("10.0.0.1:8080", "10.1.0.5:80", None, None),
            Err(BounceError::BadListen { text: "10.0.0.1:8080".into() }),
            "the listen side needs its protocol"
        );
        assert!(matches!(
            ServiceSpec::new("10.0.0.1:8080/tcp", "10.1.0.5:80/udp", None, None),
            Err(BounceError::ProtocolMismatch { .. })
        ));
        assert!(matches!(
            ServiceSpec::new("10.0.0.1:8080/tcp", "[fd00::5]:80", None, None),
            Err(BounceError::FamilyMismatch { what: "target", .. })
        ));
        assert!(matches!(
            ServiceSpec::new("10.0.0.1:8080/tcp", "10.1.0.5:80", Some("fd00::1".parse().expect("an address")), None),
            Err(BounceError::FamilyMismatch { what: "source", .. })
        ));
        assert_eq!(
            ServiceSpec::new("10.0.0.1:0/udp", "10.1.0.5:80", None, None),
            Err(BounceError::PortZero { what: "listen" })
        );
        assert_eq!(
            ServiceSpec::new("10.0.0.1:53/udp", "10.1.0.5:0", None, None),
            Err(BounceError::PortZero { what: "target" })
        );
        assert_eq!(parse_port_range("61000-61003"), Ok(range(61000, 61003)));
        assert_eq!(parse_port_range("61000"), Ok(range(61000, 61000)), "one port");
        for bad in ["61003-61000", "0-5", "a-b", "1-65536", ""] {
            assert!(parse_port_range(bad).is_err(), "{bad} must be refused");
        }
        // The source ports stay clear of the host's ephemeral range.
        let ephemeral = range(32768, 60999);
        assert_eq!(spec.check_ports(ephemeral), Ok(()), "the default range is above Linux's default");
        for (first, last) in [(40000, 40010), (60999, 61010), (30000, 32768), (1024, 65535)] {
            let spec =
                ServiceSpec::new("10.0.0.1:8080/tcp", "10.1.0.5:80", None, Some(range(first, last))).expect("valid");
            let error = spec.check_ports(ephemeral).expect_err("overlaps the ephemeral range").to_string();
            assert!(error.contains(&format!("{first}-{last}")) && error.contains("32768-60999"), "{error}");
        }
    }

    #[test]
    fn events_convert_to_wall_clock_and_name_both_sides() {
        let tuple = |src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16| FlowTuple {
            src: Addr::from_v4(src),
            dst: Addr::from_v4(dst),
            src_port: sport.to_be_bytes(),
            dst_port: dport.to_be_bytes(),
            protocol: IPPROTO_TCP,
            reserved: [0; 3],
        };
        let raw = BounceEvent {
            time_ns: 2_000_000_000,
            kind: rewrite_common::bounce::EVENT_DISCONNECT,
            reason: rewrite_common::bounce::REASON_FIN,
            client: tuple([10, 1, 0, 2], 40000, [10, 1, 0, 1], 8080),
            target: tuple([10, 2, 0, 1], 61001, [10, 2, 0, 2], 80),
            packets: [5, 4],
            bytes: [500, 4000],
            duration_ns: 1_500_000_000,
        };
        let clock = Clock { unix_at_start: 1000.0, monotonic_at_start: 1_000_000_000 };
        let event = Event::from_raw(&raw, &clock);
        assert!((event.time - 1001.0).abs() < 1e-9, "{}", event.time);
        assert_eq!(event.reason, Some("fin"));
        assert_eq!(event.client, "10.1.0.2:40000".parse().expect("an address"));
        assert_eq!(event.listen, "10.1.0.1:8080".parse().expect("an address"));
        assert_eq!(event.source, "10.2.0.1:61001".parse().expect("an address"));
        assert_eq!(event.target, "10.2.0.2:80".parse().expect("an address"));
        assert_eq!(
            event.to_string(),
            "1001.000 disconnect tcp 10.1.0.2:40000 -> 10.1.0.1:8080 via 10.2.0.1:61001 -> 10.2.0.2:80 fin after \
             1.500 s, 5 packets/500 bytes out, 4 packets/4000 bytes back"
        );
    }
}
