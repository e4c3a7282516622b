//! BPF_PROG_TEST_RUN fixtures: the real programs, loaded into the kernel, run on
//! crafted frames. Every case compares the whole output frame byte for byte with the
//! expected one, checks its checksums by full recomputation, and checks that exactly
//! the expected outcome counter moved (the fixture is `rewrite_tests::fixture`). One
//! file per theme.

mod addresses;
mod filter;
mod icmp_errors;
mod ipv6;
mod malformed;
mod ports_and_prefixes;
mod table;
mod trace;

use aya::maps::{HashMap, Map, MapData};
use rewrite_common::{
    counters::{FRAGMENT_UNMATCHED, MALFORMED, NO_MATCH, REWRITTEN, UNSUPPORTED},
    mapping::{AddressMapping, PrefixMapping},
    maps::{Addr, AddressEntry, MAP_ADDR_FORWARD, MappingStats},
    spec::MappingSpec,
};
use rewrite_tests::{
    fixture::*,
    packet::{ETH_LEN, IPV6_DESTINATION_OPTIONS, IPV6_HOP_BY_HOP, IPV6_ROUTING, IpSpec, Transport, unhex},
};
use rewrite_user::{
    Error,
    table::{counters::MappingCounters, live::Removed},
};
