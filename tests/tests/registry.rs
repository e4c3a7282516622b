//! The registry of pinned objects (`rewrite_common::pinned`) held against the two
//! objects this build carries: every map with its type, key and value size and whether
//! it is pinned, every program with its kind, nothing more and nothing less. And the
//! registry is what loads check: a pinned map of any registered name whose layout
//! differs (a gate or bounce map as much as a mapping map) refuses the load, and with it
//! `attach` and `upgrade`, before any program uses it.

use std::collections::BTreeMap;

use aya::{Ebpf, EbpfLoader, programs::Program};
use rewrite_common::{
    bounce::{MAP_BOUNCE_FLOWS, MAP_BOUNCE_SETTINGS},
    gate::MAP_GATE_PORTS,
    pinned::{self, MapType, Object, ProgramKind},
};
use rewrite_tests::netns::PinDir;
use rewrite_user::{
    Error,
    dataplane::{objects, pins::PinLayout},
};

/// Loads `bytes` with its maps pinned in a fresh directory (a small flow table).
fn load(tag: &str, bytes: &[u8]) -> (PinDir, PinLayout, Ebpf) {
    let pins = PinDir::new(tag);
    let layout = PinLayout::new(pins.path());
    layout.create_dir(&layout.maps_dir()).expect("create the pin directory on bpffs");
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(layout.maps_dir())
        .map_max_entries(MAP_BOUNCE_FLOWS, 64)
        .load(bytes)
        .expect("load the object");
    (pins, layout, ebpf)
}

#[test]
fn both_objects_declare_exactly_the_registered_maps_and_programs() {
    for (object, bytes) in [(Object::Rewrite, objects::EBPF_OBJECT), (Object::Bounce, objects::BOUNCE_OBJECT)] {
        let (_pins, layout, ebpf) = load("registry", bytes);
        let mut found = BTreeMap::new();
        for (name, map) in ebpf.maps() {
            // Globals (the build tag in `.rodata`): aya makes each data section a map of its
            // own, private to this load; never pinned, so not the registry's business.
            if name.starts_with('.') {
                assert!(!layout.map(name).exists(), "{object:?}: data section {name} must not be pinned");
                continue;
            }
            let info = objects::map_data(map).info().unwrap_or_else(|error| panic!("{object:?} {name}: {error}"));
            let map_type = info.map_type().map(|map_type| map_type as u32).unwrap_or(u32::MAX);
            let pinned = layout.map(name).exists();
            found.insert(name.to_owned(), (map_type, info.key_size(), info.value_size(), pinned));
        }
        let registered: BTreeMap<String, _> =
            pinned::MAPS.iter().filter(|map| map.object == object).map(|map| (map.name.to_owned(), map)).collect();
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            registered.keys().collect::<Vec<_>>(),
            "{object:?}: the object's maps and the registry's"
        );
        for (name, (map_type, key_size, value_size, is_pinned)) in &found {
            let expected = registered[name];
            assert_eq!(*map_type, expected.map_type as u32, "{object:?} {name}: map type");
            assert_eq!(*is_pinned, expected.pinned, "{object:?} {name}: pinned");
            if expected.pinned {
                assert_eq!((*key_size, *value_size), (expected.key_size, expected.value_size), "{object:?} {name}");
            } else {
                assert_eq!(expected.map_type, MapType::PerCpuArray, "{object:?} {name}: only scratch is private");
            }
        }
        let programs: BTreeMap<String, ProgramKind> = ebpf
            .programs()
            .map(|(name, program)| {
                let kind = match program {
                    Program::Xdp(_) => ProgramKind::Xdp,
                    Program::SchedClassifier(_) => ProgramKind::Classifier,
                    other => panic!("{object:?} {name}: a program of a kind the registry does not know: {other:?}"),
                };
                (name.to_owned(), kind)
            })
            .collect();
        let registered: BTreeMap<String, ProgramKind> =
            pinned::programs(object).map(|program| (program.name.to_owned(), program.kind)).collect();
        assert_eq!(programs, registered, "{object:?}: the object's programs and the registry's");
    }
}

/// A pinned map of a registered name but another layout, where a load would reuse it.
#[test]
fn a_pinned_gate_or_bounce_map_of_another_layout_refuses_the_load() {
    for (map, load) in [
        (MAP_GATE_PORTS, objects::load as fn(&std::path::Path, Option<u32>) -> Result<Ebpf, Error>),
        (MAP_BOUNCE_SETTINGS, |dir: &std::path::Path, _| objects::load_bounce(dir, Some(64))),
    ] {
        let pins = PinDir::new("registry-layout");
        let layout = PinLayout::new(pins.path());
        layout.create_dir(&layout.maps_dir()).expect("create the pin directory on bpffs");
        rewrite_tests::programs::pin_foreign_hash_map(&layout.map(map), 16, 8);
        match load(&layout.maps_dir(), Some(64)) {
            Err(error @ Error::IncompatibleMap { .. }) => {
                let text = error.to_string();
                assert!(text.contains(map) && text.contains("value size 8"), "names the map and its layout: {text}");
            }
            Err(other) => panic!("{map}: refused, but not for its layout: {other}"),
            Ok(_) => panic!("{map}: a pinned map of another layout must refuse the load"),
        }
    }
}
