//! Shared between the eBPF programs (`no_std`, built for `bpfel-unknown-none`) and
//! userspace (`user` feature): the byte layout of every map key and value, the
//! counter indices, and the pure logic of the rewrite (checksum arithmetic and the
//! mapping semantics), so that the host can unit-test what the kernel runs.
#![cfg_attr(not(any(test, feature = "user")), no_std)]

/// Serde for a type written as text everywhere (an address side, a prefix, a port
/// range): serialized with `Display`, read with `FromStr`, so JSON, TOML and the CLI
/// agree on one written form.
#[cfg(any(test, feature = "user"))]
macro_rules! serde_as_text {
    ($type:ty, $expecting:literal) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $type;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$type, E> {
                        text.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }
    };
}

pub mod bounce;
pub mod checksum;
pub mod counters;
pub mod filter;
pub mod gate;
pub mod mapping;
pub mod maps;
#[cfg(any(test, feature = "user"))]
pub mod model;
pub mod pinned;
pub mod ports;
#[cfg(any(test, feature = "user"))]
pub mod prefix;
pub mod protocol;
#[cfg(any(test, feature = "user"))]
pub mod reference;
#[cfg(any(test, feature = "user"))]
pub mod spec;
pub mod trace;
#[cfg(any(test, feature = "user"))]
pub mod validate;
