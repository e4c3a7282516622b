//! A config's `[gate]` section: the whole gate as it must be, what applying it changes
//! (worked out before anything is written), and the writes.

use rewrite_common::{
    gate::{GateSettings, MAP_GATE_SETTINGS, PORT_MANAGEMENT, PORT_PROTECTED, PORT_SLOTS},
    prefix::Prefix,
};

use crate::{
    Error,
    dataplane::pins::PinLayout,
    gate::{
        Mode,
        ports::{ClientPorts, PortSpec, slot},
        table::GateTable,
    },
};

/// The `[gate]` section of a config file: the whole gate, as it must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateConfig {
    pub mode: Mode,
    /// Port specs as `protect` takes them, each checked.
    pub protect: Vec<String>,
    /// Allow prefixes, host bits cleared.
    pub allow: Vec<Prefix>,
    /// `None`: ssh, the default fail-safe; an empty list: no management port.
    pub management: Option<Vec<String>>,
}

impl GateTable {
    /// The live gate as a `[gate]` section.
    pub fn config(&self) -> Result<GateConfig, Error> {
        let view = self.view()?;
        let mut allow = self.allow_prefixes()?;
        allow.sort();
        Ok(GateConfig {
            mode: view.mode,
            protect: view.protected,
            allow,
            management: view.management_configured.then_some(view.management),
        })
    }
}

/// What applying a `[gate]` section changes, worked out against the live maps (or an
/// empty gate if the dataplane is not loaded yet), with every port checked first.
#[derive(Debug)]
pub struct GatePlan {
    settings: GateSettings,
    /// (slot, new bits) for every port whose bits change.
    ports: Vec<(u32, u32)>,
    allow_added: Vec<Prefix>,
    allow_removed: Vec<Prefix>,
    mode_changes: Option<(Mode, Mode)>,
}

impl GatePlan {
    /// One line per kind of change, for `apply` and the agent's log.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some((from, to)) = self.mode_changes {
            lines.push(format!("gate mode {} -> {}", from.name(), to.name()));
        }
        if !self.ports.is_empty() {
            let ports = self.ports.len();
            lines.push(if ports == 1 {
                "gate: 1 port changes class".to_owned()
            } else {
                format!("gate: {ports} ports change class")
            });
        }
        lines.extend(self.allow_added.iter().map(|allowed| format!("gate allow {allowed}")));
        lines.extend(self.allow_removed.iter().map(|allowed| format!("gate disallow {allowed}")));
        lines
    }
}

/// Works out what `config` changes in the gate at `pins`, given the client ports the
/// gate must leave open (with the bounce ranges the same apply leaves in place).
/// Changes nothing.
pub fn plan(pins: &PinLayout, config: &GateConfig, client: &ClientPorts) -> Result<GatePlan, Error> {
    let mut wanted = vec![0u32; PORT_SLOTS as usize];
    let mut mark = |texts: &[String], bit: u32| -> Result<(), Error> {
        for text in texts {
            for (protocol, port) in PortSpec::parse(text)?.slots(client)? {
                wanted[slot(protocol, port) as usize] |= bit;
            }
        }
        Ok(())
    };
    mark(&config.protect, PORT_PROTECTED)?;
    mark(config.management.as_deref().unwrap_or_default(), PORT_MANAGEMENT)?;
    let settings =
        GateSettings { mode: config.mode.value(), management_configured: u32::from(config.management.is_some()) };
    let (current_settings, current_ports, current_allow) = if pins.map(MAP_GATE_SETTINGS).exists() {
        let table = GateTable::open(pins)?;
        (table.read_settings()?, table.all_port_bits()?, table.allow_prefixes()?)
    } else {
        (GateSettings::default(), vec![0u32; PORT_SLOTS as usize], Vec::new())
    };
    let ports = (0..PORT_SLOTS)
        .zip(wanted.iter().zip(&current_ports))
        .filter(|(_, (wanted, current))| wanted != current)
        .map(|(slot, (wanted, _))| (slot, *wanted))
        .collect();
    let wanted_allow: Vec<Prefix> = config.allow.iter().map(|prefix| prefix.masked()).collect();
    let (from, to) = (Mode::from_value(current_settings.mode), config.mode);
    Ok(GatePlan {
        settings,
        ports,
        allow_added: wanted_allow.iter().filter(|prefix| !current_allow.contains(prefix)).copied().collect(),
        allow_removed: current_allow.iter().filter(|prefix| !wanted_allow.contains(prefix)).copied().collect(),
        mode_changes: (from != to).then_some((from, to)),
    })
}

/// Applies a plan: prefixes first and ports next, the mode last, so that a gate
/// going into enforce already admits what it must.
pub fn apply(pins: &PinLayout, plan: &GatePlan) -> Result<(), Error> {
    let mut table = GateTable::open(pins)?;
    for prefix in &plan.allow_added {
        table.allow(*prefix, true)?;
    }
    for &(slot, bits) in &plan.ports {
        table.set_slot(slot, bits)?;
    }
    for prefix in &plan.allow_removed {
        table.allow(*prefix, false)?;
    }
    table.write_settings(plan.settings)
}
