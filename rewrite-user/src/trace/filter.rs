//! The trace filter's grammar, a small subset of pcap-filter's: terms joined by `and`.
//!
//! ```text
//! filter := term ("and" term)*
//! term   := [src|dst] host ADDR | [src|dst] net PREFIX | [src|dst] port PORT[-PORT]
//!         | tcp | udp | (tcp|udp) [src|dst] port PORT[-PORT]
//! ```
//!
//! At most two address terms (`host A and host B` follows one conversation), one port
//! term and one protocol: what the programs' [`TraceFilter`] holds. Anything else is
//! refused with the column of the word that does not fit.

use std::net::IpAddr;

use rewrite_common::{
    maps::Addr,
    ports::PortRange,
    prefix::Prefix,
    protocol::Protocol,
    trace::{AddressTerm, PortTerm, SIDE_DESTINATION, SIDE_EITHER, SIDE_SOURCE, SIDE_UNUSED, TraceFilter},
};

/// Why a filter does not parse, and where (the column of the word, from 1, in the
/// filter's words joined by single spaces).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("trace filter {expression:?}, column {column}: {message}")]
pub struct FilterError {
    pub expression: String,
    pub column: usize,
    pub message: String,
}

/// One word of the filter and its column.
#[derive(Clone, Copy)]
struct Word<'a> {
    text: &'a str,
    column: usize,
}

/// Parses the filter given as words (the command line's arguments after the options);
/// no words select every packet.
pub fn parse_filter(words: &[String]) -> Result<TraceFilter, FilterError> {
    let expression = words.join(" ");
    let mut column = 1;
    let mut list = Vec::new();
    for text in expression.split(' ') {
        if !text.is_empty() {
            list.push(Word { text, column });
        }
        column += text.chars().count() + 1;
    }
    let mut parser = Parser { expression: &expression, words: list, next: 0, filter: TraceFilter::default() };
    parser.filter()?;
    Ok(parser.filter)
}

struct Parser<'a> {
    expression: &'a str,
    words: Vec<Word<'a>>,
    next: usize,
    filter: TraceFilter,
}

impl<'a> Parser<'a> {
    fn error(&self, column: usize, message: impl Into<String>) -> FilterError {
        FilterError { expression: self.expression.to_owned(), column, message: message.into() }
    }

    /// The column just past the filter, for "expected more".
    fn end(&self) -> usize {
        self.expression.chars().count() + 1
    }

    fn peek(&self) -> Option<Word<'a>> {
        self.words.get(self.next).copied()
    }

    fn take(&mut self, what: &str) -> Result<Word<'a>, FilterError> {
        match self.words.get(self.next).copied() {
            Some(word) => {
                self.next += 1;
                Ok(word)
            }
            None => Err(self.error(self.end(), format!("expected {what} after the last word"))),
        }
    }

    fn filter(&mut self) -> Result<(), FilterError> {
        if self.words.is_empty() {
            return Ok(());
        }
        loop {
            self.term()?;
            match self.peek() {
                None => return Ok(()),
                Some(word) if word.text == "and" || word.text == "&&" => {
                    self.next += 1;
                    if self.peek().is_none() {
                        return Err(self.error(self.end(), "expected a term after `and`"));
                    }
                }
                Some(word) if matches!(word.text, "or" | "||" | "not" | "!") || word.text.starts_with('(') => {
                    return Err(self.error(word.column, format!("`{}`: only `and` joins terms", word.text)));
                }
                Some(word) => {
                    return Err(self.error(word.column, format!("`{}`: expected `and` between terms", word.text)));
                }
            }
        }
    }

    fn term(&mut self) -> Result<(), FilterError> {
        let word = self.take("a term")?;
        let (text, column) = (word.text, word.column);
        match text {
            "tcp" | "udp" => {
                let protocol: Protocol = text.parse().map_err(|_| self.error(column, "not a protocol"))?;
                self.protocol(protocol, column)?;
                // `tcp port 80`, `udp dst port 53`: a protocol qualifies the port term after it.
                let qualifies = match self.peek() {
                    Some(next) if next.text == "port" => true,
                    Some(next) if matches!(next.text, "src" | "dst") => {
                        self.words.get(self.next + 1).is_some_and(|after| after.text == "port")
                    }
                    _ => false,
                };
                if qualifies { self.term() } else { Ok(()) }
            }
            "src" | "dst" => {
                let side = if text == "src" { SIDE_SOURCE } else { SIDE_DESTINATION };
                let primitive = self.take("host, net or port")?;
                let (primitive, primitive_column) = (primitive.text, primitive.column);
                self.primitive(primitive, primitive_column, side)
            }
            "host" | "net" | "port" => self.primitive(text, column, SIDE_EITHER),
            "icmp" | "icmp6" | "ip" | "ip6" | "arp" => {
                Err(self
                    .error(column, format!("`{text}`: the filter selects tcp or udp (or any protocol, without one)")))
            }
            "and" => Err(self.error(column, "`and` needs a term before it")),
            _ => Err(self.error(column, format!("`{text}`: expected host, net, port, src, dst, tcp or udp"))),
        }
    }

    fn primitive(&mut self, kind: &'a str, column: usize, side: u8) -> Result<(), FilterError> {
        let value = match kind {
            "host" => self.take("an address")?,
            "net" => self.take("a prefix (ADDR/LEN)")?,
            "port" => self.take("a port or a range FIRST-LAST")?,
            _ => return Err(self.error(column, format!("`{kind}`: expected host, net or port"))),
        };
        let (text, value_column) = (value.text, value.column);
        match kind {
            "host" => {
                let addr: IpAddr = text.parse().map_err(|_| {
                    self.error(value_column, format!("`{text}`: not an IPv4 or IPv6 address (use `net` for a prefix)"))
                })?;
                self.address(Prefix::host(addr), side, column)
            }
            "net" => {
                let prefix: Prefix =
                    text.parse().map_err(|error| self.error(value_column, format!("`{text}`: {error}")))?;
                self.address(prefix.masked(), side, column)
            }
            _ => {
                let range: PortRange =
                    text.parse().map_err(|error| self.error(value_column, format!("`{text}`: {error}")))?;
                if self.filter.port.side != SIDE_UNUSED {
                    return Err(self.error(column, "one port term at most"));
                }
                self.filter.port = PortTerm { first: range.first(), last: range.last(), side, reserved: [0; 3] };
                Ok(())
            }
        }
    }

    fn address(&mut self, prefix: Prefix, side: u8, column: usize) -> Result<(), FilterError> {
        let Some(slot) = self.filter.addresses.iter_mut().find(|term| term.side == SIDE_UNUSED) else {
            return Err(self.error(column, "two host or net terms at most"));
        };
        let mask = prefix_mask(prefix);
        let value = Addr::from(prefix.net());
        *slot = AddressTerm { value: and(value, mask), mask, side, reserved: [0; 3] };
        Ok(())
    }

    fn protocol(&mut self, protocol: Protocol, column: usize) -> Result<(), FilterError> {
        let number = protocol.number();
        if self.filter.protocol != 0 && self.filter.protocol != number {
            return Err(self.error(column, "a packet has one protocol: tcp and udp never both hold"));
        }
        self.filter.protocol = number;
        Ok(())
    }
}

/// The mask of `prefix` in the 16-byte form (IPv4 mapped: 96 + its length).
fn prefix_mask(prefix: Prefix) -> Addr {
    let bits = u32::from(prefix.len()) + if prefix.is_ipv4() { 96 } else { 0 };
    let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
    Addr { octets: mask.to_be_bytes() }
}

fn and(addr: Addr, mask: Addr) -> Addr {
    let mut octets = addr.octets;
    for (octet, mask) in octets.iter_mut().zip(mask.octets) {
        *octet &= mask;
    }
    Addr { octets }
}

#[cfg(test)]
mod tests {
    use rewrite_common::bounce::FlowTuple;

    use super::*;

    fn parse(text: &str) -> Result<TraceFilter, FilterError> {
        parse_filter(&text.split(' ').map(str::to_owned).collect::<Vec<_>>())
    }

    fn tuple(src: &str, dst: &str, ports: (u16, u16), protocol: u8) -> FlowTuple {
        FlowTuple {
            src: Addr::from(src.parse::<IpAddr>().expect("an address")),
            dst: Addr::from(dst.parse::<IpAddr>().expect("an address")),
            src_port: ports.0.to_be_bytes(),
            dst_port: ports.1.to_be_bytes(),
            protocol,
            reserved: [0; 3],
        }
    }

    #[test]
    fn the_issues_example_selects_its_flow_both_ways() {
        let filter = parse("host 10.0.0.5 and tcp port 9300").expect("a valid filter");
        assert!(filter.selects_tuple(&tuple("10.0.0.5", "10.0.0.9", (40000, 9300), 6)));
        assert!(filter.selects_tuple(&tuple("10.0.0.9", "10.0.0.5", (9300, 40000), 6)));
        assert!(!filter.selects_tuple(&tuple("10.0.0.9", "10.0.0.5", (9300, 40000), 17)));
        assert!(!filter.selects_tuple(&tuple("10.0.0.9", "10.0.0.6", (9300, 40000), 6)));
    }

    #[test]
    fn sides_nets_ranges_and_ipv6() {
        let filter = parse("src net 10.1.0.0/16 and dst port 9000-9010 and udp").expect("a valid filter");
        assert!(filter.selects_tuple(&tuple("10.1.2.3", "10.9.9.9", (1, 9005), 17)));
        assert!(!filter.selects_tuple(&tuple("10.9.9.9", "10.1.2.3", (9005, 9005), 17)), "source side only");
        assert!(!filter.selects_tuple(&tuple("10.1.2.3", "10.9.9.9", (1, 9011), 17)));
        let filter = parse("host fd00::5 and host fd00::6").expect("a valid filter");
        assert!(filter.selects_tuple(&tuple("fd00::6", "fd00::5", (1, 2), 6)));
        assert!(!filter.selects_tuple(&tuple("fd00::6", "fd00::7", (1, 2), 6)));
        assert!(!filter.selects_tuple(&tuple("10.0.0.5", "10.0.0.6", (1, 2), 6)), "families differ");
        let all = parse_filter(&[]).expect("no words: everything");
        assert!(!all.tests_the_tuple());
    }

    #[test]
    fn errors_name_the_word_and_its_column() {
        let cases = [
            ("host 10.0.0.5 or port 80", 15, "only `and`"),
            ("host 10.0.0.300", 6, "not an IPv4 or IPv6 address"),
            ("port 70000", 6, "a port is a number"),
            ("net 10.0.0.0/40", 5, "prefix length"),
            ("tcp and udp", 9, "one protocol"),
            ("host 10.0.0.5 port 80", 15, "expected `and`"),
            ("host", 5, "expected an address"),
            ("host 10.0.0.5 and", 18, "a term after `and`"),
            ("icmp", 1, "tcp or udp"),
            ("port 1 and port 2", 12, "one port term"),
            ("host 1.1.1.1 and host 2.2.2.2 and host 3.3.3.3", 35, "two host or net"),
            ("bogus", 1, "expected host, net"),
        ];
        for (text, column, message) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.column, column, "{text}: {error}");
            assert!(error.to_string().contains(message), "{text}: {error}");
        }
    }
}
