//! The pinned data plane's own guard rails: a binary refuses pins written with another
//! map layout (it would misread them) and says what to do.
use std::path::PathBuf;

use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues};
use sg_common::abi::{MAP_LAYOUT_VERSION, RuleCounters};
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

/// Per-rule counters live in slots of a per-CPU array: a kept rule keeps its slot (and
/// its counts), a new rule gets a zeroed free slot, released slots are reused, and a
/// full array is an error naming the limit.
#[test]
fn rule_counter_slots_follow_the_rules() {
    sg_tests::require_root!();
    let dir = PathBuf::from(format!("/sys/fs/bpf/sg-test-slots-{}", std::process::id()));
    Dataplane::uninstall(&dir).unwrap();
    let capacity = Capacity { rule_stats: 4, ..Capacity::default() };
    let mut dp = Dataplane::open(&dir, capacity).unwrap();

    let first = dp.rule_slots(&[(7, &[100, 200]), (8, &[100])]).unwrap();
    assert_eq!(first, [vec![0, 1], vec![2]], "distinct slots, per interface and rule");
    // Asking again changes nothing; a kept rule keeps its slot, a new one gets a free one.
    assert_eq!(dp.rule_slots(&[(7, &[100, 200])]).unwrap(), [vec![0, 1]]);
    assert_eq!(dp.rule_slots(&[(7, &[200, 300])]).unwrap(), [vec![1, 3]]);
    // Full (slot 0 still belongs to rule 100 of interface 7 until released).
    let err = format!("{:#}", dp.rule_slots(&[(9, &[1])]).unwrap_err());
    assert!(err.contains("no free rule counter slot") && err.contains("rule_stats"), "{err}");
    // Counts in slot 0 (as the kernel would leave them) belong to rule 100 of interface 7.
    {
        let cpus = aya::util::nr_cpus().unwrap().get() as usize;
        let pin = MapData::from_pin(dir.join(sg_common::abi::MAP_RULE_STATS)).unwrap();
        let mut stats: PerCpuArray<MapData, RuleCounters> =
            PerCpuArray::try_from(Map::PerCpuArray(pin)).unwrap();
        let some = RuleCounters { packets: 5, bytes: 500 };
        stats.set(0, PerCpuValues::try_from(vec![some; cpus]).unwrap(), 0).unwrap();
        let n = cpus as u64;
        assert_eq!(dp.rule_counts(7).unwrap().get(&100), Some(&(5 * n, 500 * n)));
    }
    // Releasing rule 100 of interface 7 frees slot 0 for the next rule.
    dp.retain_rule_slots(|k| !(k.ifindex == 7 && k.rule_id == 100)).unwrap();
    assert_eq!(dp.rule_slots(&[(9, &[1])]).unwrap(), [vec![0]]);
    assert_eq!(dp.rule_counts(9).unwrap().get(&1), Some(&(0, 0)), "a reused slot starts at zero");
    assert_eq!(dp.rule_counts(7).unwrap().keys().copied().collect::<Vec<_>>(), [200, 300]);
    drop(dp);
    Dataplane::uninstall(&dir).unwrap();
}

/// Interfaces numbered below IFACE_INDEX_SLOTS are bound through a word the daemon
/// stores atomically and the kernel reads without a map call; the others through the
/// hash. Both read back as the binding, and unbinding clears both.
#[test]
fn bindings_reach_the_kernel_through_word_or_hash() {
    sg_tests::require_root!();
    let dir = PathBuf::from(format!("/sys/fs/bpf/sg-test-words-{}", std::process::id()));
    Dataplane::uninstall(&dir).unwrap();
    let mut dp = Dataplane::open(&dir, Capacity::default()).unwrap();
    let high = sg_common::abi::IFACE_INDEX_SLOTS + 5;
    for (ifindex, policy_id, flags) in [(3, 7, 0), (3, 9, 3), (high, 11, 1)] {
        dp.bind(ifindex, policy_id, flags).unwrap();
        let b = dp.binding(ifindex).unwrap().expect("bound");
        assert_eq!((b.policy_id, b.flags), (policy_id, flags));
        assert_eq!(dp.kernel_binding(ifindex).unwrap(), Some(b), "the kernel's view of {ifindex}");
    }
    assert_eq!(dp.bindings().unwrap().keys().copied().collect::<Vec<_>>(), [3, high]);
    // The same binding, re-published after a reopen (another daemon run).
    drop(dp);
    let mut dp = Dataplane::open(&dir, Capacity::default()).unwrap();
    assert_eq!(dp.kernel_binding(3).unwrap().map(|b| b.policy_id), Some(9));
    for ifindex in [3, high] {
        dp.unbind(ifindex).unwrap();
        assert_eq!(dp.binding(ifindex).unwrap(), None);
        assert_eq!(dp.kernel_binding(ifindex).unwrap(), None);
    }
    drop(dp);
    Dataplane::uninstall(&dir).unwrap();
}
