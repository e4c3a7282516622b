//! A trace record as `trace` prints it: the programs' numbers named.

use std::{collections::HashMap, fmt, net::IpAddr};

use rewrite_common::{
    bounce::FlowTuple,
    counters::{OUTCOME_NAMES, OUTCOMES},
    gate::GATE_COUNTER_NAMES,
    protocol::Protocol,
    trace::{
        GATE_JUDGED_BASE, HOOK_TC_EGRESS, OUTCOME_GATE_DROPPED, OUTCOME_LEFT_TO_TC, REASON_NONE, TraceRecord,
        hook_name, matched_name, reason_name,
    },
};
use serde::Serialize;

use crate::dataplane::ring::Clock;

/// One side of a packet's flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// `tcp`, `udp`, or absent for a packet without ports (ICMP, a later fragment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    pub src: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
}

impl Flow {
    fn of(tuple: &FlowTuple) -> Self {
        let protocol = Protocol::from_number(tuple.protocol);
        let port = |port: [u8; 2]| protocol.map(|_| u16::from_be_bytes(port));
        Self {
            protocol,
            src: IpAddr::from(tuple.src),
            src_port: port(tuple.src_port),
            dst: IpAddr::from(tuple.dst),
            dst_port: port(tuple.dst_port),
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = |f: &mut fmt::Formatter<'_>, addr: IpAddr, port: Option<u16>| match (addr, port) {
            (IpAddr::V6(addr), Some(port)) => write!(f, "[{addr}]:{port}"),
            (addr, Some(port)) => write!(f, "{addr}:{port}"),
            (addr, None) => write!(f, "{addr}"),
        };
        endpoint(f, self.src, self.src_port)?;
        f.write_str(" > ")?;
        endpoint(f, self.dst, self.dst_port)
    }
}

/// Which table matched each side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Matched {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<&'static str>,
}

/// A traced packet.
#[derive(Clone, Debug, Serialize)]
pub struct TraceLine {
    /// Unix time, seconds.
    pub time: f64,
    pub iface: String,
    /// `xdp`, `tc-ingress` or `tc-egress`.
    pub hook: &'static str,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// The frame's length in bytes.
    pub len: u32,
    /// As it arrived at the hook and as it left it; absent for a packet that did not
    /// parse as far as its addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Flow>,
    /// `rewritten`, `no_match`, `malformed`, `unsupported`, `helper_error`,
    /// `fragment_unmatched`, `gate_dropped` or `left_to_tc` (an ICMP error at XDP, which
    /// the TC program beside it rewrites and traces).
    pub outcome: &'static str,
    /// Why a packet is malformed or unsupported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub matched: Matched,
    /// The gate's verdict (its counter's name), when it judged the packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<&'static str>,
    /// An ICMP error, whose quoted packet is rewritten with it.
    pub icmp_error: bool,
}

impl TraceLine {
    /// Names the numbers of `record`; `iface_name` turns an interface index into a name.
    pub(crate) fn of(record: &TraceRecord, clock: &Clock, iface_name: &mut InterfaceNames) -> Self {
        let has_tuple = record.has_tuple != 0;
        Self {
            time: clock.to_unix(record.time_ns),
            iface: iface_name.name(record.ifindex),
            hook: hook_name(record.hook),
            direction: if record.hook == HOOK_TC_EGRESS { "egress" } else { "ingress" },
            len: record.len,
            before: has_tuple.then(|| Flow::of(&record.before)),
            after: has_tuple.then(|| Flow::of(&record.after)),
            outcome: outcome_name(record.outcome),
            reason: (record.reason != REASON_NONE).then(|| reason_name(record.reason)),
            matched: Matched { source: matched_name(record.matched[0]), destination: matched_name(record.matched[1]) },
            gate: record
                .gate
                .checked_sub(GATE_JUDGED_BASE)
                .and_then(|slot| GATE_COUNTER_NAMES.get(usize::from(slot)).copied()),
            icmp_error: record.icmp_error != 0,
        }
    }
}

fn outcome_name(outcome: u8) -> &'static str {
    match outcome {
        OUTCOME_GATE_DROPPED => "gate_dropped",
        OUTCOME_LEFT_TO_TC => "left_to_tc",
        outcome if u32::from(outcome) < OUTCOMES => OUTCOME_NAMES[usize::from(outcome)],
        _ => "unknown",
    }
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6} {} {} {}", self.time, self.iface, self.hook, self.direction)?;
        match (&self.before, &self.after) {
            (Some(before), Some(after)) => {
                let protocol = before.protocol.map_or("ip", Protocol::name);
                write!(f, " {protocol} {before}")?;
                if after != before {
                    write!(f, " => {after}")?;
                }
            }
            _ => write!(f, " len {}", self.len)?,
        }
        write!(f, " {}", self.outcome)?;
        if let Some(reason) = self.reason {
            write!(f, " ({reason})")?;
        }
        if self.matched.source.is_some() || self.matched.destination.is_some() {
            f.write_str(" matched")?;
            if let Some(table) = self.matched.source {
                write!(f, " src:{table}")?;
            }
            if let Some(table) = self.matched.destination {
                write!(f, " dst:{table}")?;
            }
        }
        if let Some(gate) = self.gate {
            write!(f, " gate:{gate}")?;
        }
        if self.icmp_error {
            f.write_str(" icmp-error")?;
        }
        Ok(())
    }
}

/// Interface names by index, looked up once each.
#[derive(Debug, Default)]
pub struct InterfaceNames {
    names: HashMap<u32, String>,
}

impl InterfaceNames {
    pub fn name(&mut self, index: u32) -> String {
        self.names.entry(index).or_insert_with(|| interface_name(index).unwrap_or_else(|| format!("if{index}"))).clone()
    }
}

/// The name of interface `index` in this network namespace.
pub fn interface_name(index: u32) -> Option<String> {
    let mut buffer = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buffer.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let end = buffer.iter().position(|&byte| byte == 0).unwrap_or(buffer.len());
    Some(String::from_utf8_lossy(&buffer[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use rewrite_common::{
        counters::{MALFORMED, REWRITTEN},
        maps::Addr,
        trace::{HOOK_XDP, MATCHED_ADDRESS, MATCHED_NONE, REASON_BAD_TCP_DATA_OFFSET},
    };

    use super::*;

    fn tuple(src: &str, src_port: u16, dst: &str, dst_port: u16) -> FlowTuple {
        FlowTuple {
            src: Addr::from(src.parse::<IpAddr>().expect("an address")),
            dst: Addr::from(dst.parse::<IpAddr>().expect("an address")),
            src_port: src_port.to_be_bytes(),
            dst_port: dst_port.to_be_bytes(),
            protocol: 6,
            reserved: [0; 3],
        }
    }

    fn line(record: &TraceRecord) -> TraceLine {
        let clock = Clock { unix_at_start: 1_000.0, monotonic_at_start: 0 };
        // Index 0 is never an interface: the name falls back to the index.
        TraceLine::of(record, &clock, &mut InterfaceNames::default())
    }

    #[test]
    fn a_rewritten_packet_shows_both_flows_and_the_table() {
        let record = TraceRecord {
            time_ns: 500_000_000,
            hook: HOOK_TC_EGRESS,
            outcome: u8::try_from(REWRITTEN).expect("an outcome fits a byte"),
            has_tuple: 1,
            before: tuple("10.0.0.1", 40000, "10.200.0.2", 9300),
            after: tuple("10.0.0.1", 40000, "10.100.0.2", 9300),
            matched: [MATCHED_NONE, MATCHED_ADDRESS],
            gate: GATE_JUDGED_BASE,
            ..TraceRecord::default()
        };
        assert_eq!(
            line(&record).to_string(),
            "1000.500000 if0 tc-egress egress tcp 10.0.0.1:40000 > 10.200.0.2:9300 => 10.0.0.1:40000 > \
             10.100.0.2:9300 rewritten matched dst:address gate:passed_member"
        );
        let json = serde_json::to_value(line(&record)).expect("JSON");
        assert_eq!(json["after"]["dst"], "10.100.0.2");
        assert_eq!(json["matched"], serde_json::json!({ "destination": "address" }));
    }

    #[test]
    fn a_malformed_packet_shows_its_reason_and_one_without_a_flow_its_length() {
        let mut record = TraceRecord {
            hook: HOOK_XDP,
            outcome: u8::try_from(MALFORMED).expect("an outcome fits a byte"),
            reason: REASON_BAD_TCP_DATA_OFFSET,
            has_tuple: 1,
            before: tuple("fd00::7", 1, "fd00::1", 2),
            after: tuple("fd00::7", 1, "fd00::1", 2),
            len: 74,
            ..TraceRecord::default()
        };
        assert_eq!(
            line(&record).to_string(),
            "1000.000000 if0 xdp ingress tcp [fd00::7]:1 > [fd00::1]:2 malformed (TCP data offset outside the datagram)"
        );
        record.has_tuple = 0;
        assert_eq!(
            line(&record).to_string(),
            "1000.000000 if0 xdp ingress len 74 malformed (TCP data offset outside the datagram)"
        );
    }
}
