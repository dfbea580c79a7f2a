//! The pinned data plane's own guard rails: a binary refuses pins written with another
//! map layout (it would misread them) and says what to do.
use std::path::PathBuf;

use aya::maps::{Array, Map, MapData};
use sg_common::abi::MAP_LAYOUT_VERSION;
use sg_daemon::dataplane::{Capacity, Dataplane};

#[test]
fn pins_of_another_map_layout_are_refused_with_the_way_out() {
    sg_tests::require_root!();
    let dir = PathBuf::from(format!("/sys/fs/bpf/sg-test-layout-{}", std::process::id()));
    Dataplane::uninstall(&dir).unwrap();
    drop(Dataplane::open(&dir, Capacity::default()).expect("fresh directory"));
    let meta = || -> Array<MapData, u64> {
        Array::try_from(Map::Array(MapData::from_pin(dir.join("SG_META")).unwrap())).unwrap()
    };
    assert_eq!(meta().get(&1, 0).unwrap(), MAP_LAYOUT_VERSION, "the layout is recorded");
    // Reopening the same layout adopts the pins.
    drop(Dataplane::open(&dir, Capacity::default()).expect("same layout"));

    // Pins of an older layout (version slot 0 next to a program hash) and of a newer one.
    for (stored, named) in [(0u64, 1u64), (MAP_LAYOUT_VERSION + 1, MAP_LAYOUT_VERSION + 1)] {
        meta().set(1, &stored, 0).unwrap();
        let err = match Dataplane::open(&dir, Capacity::default()) {
            Ok(_) => panic!("layout {stored} adopted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&format!("uses map layout {named}")), "{err}");
        assert!(err.contains("sg-daemon uninstall"), "{err}");
    }
    Dataplane::uninstall(&dir).unwrap();
}
