//! Where rewrite's programs run on an interface: the ingress hook an attach chose, the
//! slots (each a program pin, and a link pin or a netlink filter's place), and how each
//! slot is attached, as its pins show.

use std::{fmt, path::Path};

use rewrite_common::pinned::{PROG_TC_BOUNCE, PROG_TC_EGRESS, PROG_TC_ICMP_ERRORS, PROG_TC_INGRESS, PROG_XDP_INGRESS};

use crate::{
    Error,
    dataplane::{iface, tc::FilterSlot},
};

/// Where ingress packets are rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressMode {
    /// XDP on devices whose packets come from a wire, TC on virtual devices.
    Auto,
    /// Native (driver) XDP.
    Xdp,
    /// Generic XDP, run by the stack after the skb is built.
    XdpSkb,
    /// A TC ingress program.
    Tc,
}

/// The attachment that `auto` resolved to, as recorded in the pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressHook {
    XdpDriver,
    XdpGeneric,
    Tc,
}

impl IngressHook {
    /// The program that runs at this hook.
    pub const fn program(self) -> &'static str {
        Slot::Ingress(self).program()
    }

    pub(crate) const ALL: [Self; 3] = [Self::XdpDriver, Self::XdpGeneric, Self::Tc];

    /// The mode that attaches exactly this hook.
    pub const fn mode(self) -> IngressMode {
        match self {
            Self::XdpDriver => IngressMode::Xdp,
            Self::XdpGeneric => IngressMode::XdpSkb,
            Self::Tc => IngressMode::Tc,
        }
    }
}

impl fmt::Display for IngressHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::XdpDriver => "xdp",
            Self::XdpGeneric => "xdp-skb",
            Self::Tc => "tc",
        })
    }
}

/// A place where one of rewrite's programs runs on an interface. Each has a program pin
/// (`<slot>_prog`), and, when it is attached through a bpf link (XDP, tcx), a link pin
/// (`<slot>_link`) whose removal detaches it. A TC program attached through netlink has
/// no link: its filter sits at the slot's fixed place ([`FilterSlot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Egress,
    Ingress(IngressHook),
    /// The TC program that rewrites ICMP errors beside XDP ingress.
    IcmpErrors,
    /// Bounce mode's TC ingress program.
    Bounce,
}

impl Slot {
    pub const fn program(self) -> &'static str {
        match self {
            Self::Egress => PROG_TC_EGRESS,
            Self::Ingress(IngressHook::XdpDriver | IngressHook::XdpGeneric) => PROG_XDP_INGRESS,
            Self::Ingress(IngressHook::Tc) => PROG_TC_INGRESS,
            Self::IcmpErrors => PROG_TC_ICMP_ERRORS,
            Self::Bounce => PROG_TC_BOUNCE,
        }
    }

    /// The pin file names of the program and of its link.
    pub const fn pin_names(self) -> (&'static str, &'static str) {
        match self {
            Self::Egress => ("egress_tc_prog", "egress_tc_link"),
            Self::Ingress(IngressHook::XdpDriver) => ("ingress_xdp_prog", "ingress_xdp_link"),
            Self::Ingress(IngressHook::XdpGeneric) => ("ingress_xdp_skb_prog", "ingress_xdp_skb_link"),
            Self::Ingress(IngressHook::Tc) => ("ingress_tc_prog", "ingress_tc_link"),
            Self::IcmpErrors => ("ingress_tc_icmp_errors_prog", "ingress_tc_icmp_errors_link"),
            Self::Bounce => ("ingress_tc_bounce_prog", "ingress_tc_bounce_link"),
        }
    }

    /// Where a TC slot's filter sits when it is attached through netlink; `None` for XDP.
    pub const fn filter(self) -> Option<FilterSlot> {
        match self {
            Self::Egress => Some(FilterSlot::REWRITE_EGRESS),
            Self::Ingress(IngressHook::Tc) | Self::IcmpErrors => Some(FilterSlot::REWRITE_INGRESS),
            Self::Bounce => Some(FilterSlot::BOUNCE_INGRESS),
            Self::Ingress(IngressHook::XdpDriver | IngressHook::XdpGeneric) => None,
        }
    }

    pub(crate) const ALL: [Self; 6] = [
        Self::Egress,
        Self::Ingress(IngressHook::XdpDriver),
        Self::Ingress(IngressHook::XdpGeneric),
        Self::Ingress(IngressHook::Tc),
        Self::IcmpErrors,
        Self::Bounce,
    ];

    /// The slot whose program pin is named `pin`.
    pub(crate) fn of_program_pin(pin: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|slot| slot.pin_names().0 == pin)
    }

    /// How this slot is attached on the interface whose pins are in `iface_dir`, or
    /// `None` if it is not.
    pub(crate) fn method(self, iface_dir: &Path) -> Option<AttachMethod> {
        let (prog_pin, link_pin) = self.pin_names();
        if !iface_dir.join(prog_pin).exists() {
            return None;
        }
        Some(match (iface_dir.join(link_pin).exists(), self.filter()) {
            (true, None) => AttachMethod::XdpLink,
            (true, Some(_)) => AttachMethod::Tcx,
            (false, Some(filter)) => AttachMethod::Netlink(filter),
            // An XDP program pin without its link: the link was removed by hand.
            (false, None) => AttachMethod::Unlinked,
        })
    }
}

/// How an attached program is hooked in, as its pins show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMethod {
    XdpLink,
    Tcx,
    Netlink(FilterSlot),
    Unlinked,
}

impl fmt::Display for AttachMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::XdpLink => f.write_str("xdp link"),
            Self::Tcx => f.write_str("tcx link"),
            Self::Netlink(filter) => write!(f, "netlink ({filter})"),
            Self::Unlinked => f.write_str("not attached (its link pin is missing)"),
        }
    }
}

impl IngressMode {
    /// Picks the hook for `iface`. `auto` uses XDP only where packets come from a wire:
    /// on a veth or other virtual device a packet can arrive with CHECKSUM_PARTIAL
    /// (only the pseudo-header sum in the checksum field), which XDP cannot see, and
    /// patching it as if it were complete corrupts packets that are forwarded on.
    pub fn resolve(self, iface: &str) -> Result<IngressHook, Error> {
        Ok(match self {
            Self::Auto if iface::is_wire_device(iface)? => IngressHook::XdpDriver,
            Self::Auto | Self::Tc => IngressHook::Tc,
            Self::Xdp => IngressHook::XdpDriver,
            Self::XdpSkb => IngressHook::XdpGeneric,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_its_own_pins_and_tc_slots_their_filter() {
        let mut names: Vec<&str> = Slot::ALL.iter().flat_map(|slot| [slot.pin_names().0, slot.pin_names().1]).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 2 * Slot::ALL.len(), "pin names are unique");
        for slot in Slot::ALL {
            assert_eq!(Slot::of_program_pin(slot.pin_names().0), Some(slot));
            let is_xdp = matches!(slot, Slot::Ingress(IngressHook::XdpDriver | IngressHook::XdpGeneric));
            assert_eq!(slot.filter().is_none(), is_xdp, "{slot:?}");
        }
    }
}
