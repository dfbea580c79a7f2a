//! Operator commands of `sg-daemon` (issue 4): `instance add/rm`, `ls`, `create`,
//! `rm`, `apply [--dry-run]`, `uninstall`, run as real processes against a private pin
//! and state directory, on the taps of a namespace topology.
//!
//! Every refused command is checked three ways: exit code 1, the message (it must name
//! the problem), and that nothing changed — `state.yaml` byte for byte, the `ls -o
//! json` listings and the pinned links (see `SgDaemon::refuses`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::Duration;

use sg_tests::daemon::SgDaemon;
use sg_tests::*;

const HEADERS: [&str; 7] =
    ["Direction", "Internet protocol", "Port (minimum)", "Port (maximum)", "Protocol", "CIDR", "Rule ID"];

/// A topology with `n` instances (`vm1`..) and a daemon fixture on its host namespace.
fn setup(n: usize) -> (Topology, Vec<Endpoint>, SgDaemon) {
    let mut topo = Topology::new_unique().unwrap();
    let eps = (1..=n).map(|i| topo.add_instance(&format!("vm{i}")).unwrap()).collect();
    let sg = SgDaemon::for_topology(&topo).unwrap();
    (topo, eps, sg)
}

fn ids_of(rules: &[serde_json::Value]) -> Vec<String> {
    rules.iter().map(|r| r["id"].as_str().expect("rule id").to_string()).collect()
}

/// The id of the listed rule with this direction, protocol and port.
fn find_rule(sg: &SgDaemon, instance: &str, direction: &str, protocol: &str, port: u64) -> String {
    let rules = sg.ls_rules(instance);
    rules
        .iter()
        .find(|r| r["direction"] == direction && r["protocol"] == protocol && r["port_min"] == port)
        .and_then(|r| r["id"].as_str())
        .unwrap_or_else(|| panic!("no {direction} {protocol} {port} rule in {rules:?}"))
        .to_string()
}

#[test]
fn create_refuses_invalid_rules_and_changes_nothing() {
    require_root!();
    let (_topo, eps, sg) = setup(1);
    sg.ok(&["instance", "add", "vm1", "--iface", eps[0].tap(), "--os", "linux"]);
    let ssh = find_rule(&sg, "vm1", "ingress", "tcp", 22);
    let create = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["create", "-s", "vm1", "--in", "--proto", "tcp"];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect()
    };
    #[rustfmt::skip]
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (create(&["-p", "80", "--cidr", "10.1.2.3/0"]), vec!["10.1.2.3/0", "insecure"]),
        (create(&["-p", "80", "--ipv6", "--cidr", "::1/0"]), vec!["::1/0", "insecure"]),
        (create(&["-p", "80", "--cidr", "10.1.2.3/24"]), vec!["host bits set", "did you mean 10.1.2.0/24"]),
        (create(&["-p", "80", "--ipv6", "--cidr", "2001:db8::1/32"]), vec!["did you mean 2001:db8::/32"]),
        (create(&["-p", "80", "--ipv6", "--cidr", "10.0.0.0/8"]), vec!["10.0.0.0/8 is not an IPv6 network"]),
        (create(&["-p", "0"]), vec!["port 0 is not a valid port"]),
        (create(&["-p", "0-80"]), vec!["port 0 is not a valid port"]),
        (create(&["-p", "90-80"]), vec!["90-80", "reversed"]),
        (create(&["-p", "1-65535"]), vec!["opens every port", "--force"]),
        (create(&["--cidr", "198.51.100.0/24"]), vec!["opens every port", "--force"]),
        (create(&["-p", "22"]), vec!["exists already", &ssh]),
        (
            ["create", "-s", "vm1", "--in", "--proto", "6", "-p", "22-22", "--cidr", "0.0.0.0/0"].map(String::from).to_vec(),
            vec!["exists already", &ssh],
        ),
        (create(&["--icmp-type", "8"]), vec!["icmp type/code given for protocol tcp"]),
        (
            ["create", "-s", "vm1", "--in", "--proto", "icmp", "-p", "22"].map(String::from).to_vec(),
            vec!["protocol icmp has no ports"],
        ),
        (
            ["create", "-s", "vm1", "--in", "--proto", "icmp", "--icmp-code", "0"].map(String::from).to_vec(),
            vec!["icmp code given without icmp type"],
        ),
        (
            ["create", "-s", "vm1", "--in", "--proto", "icmpv6", "--cidr", "10.0.0.0/8"].map(String::from).to_vec(),
            vec!["icmpv6 needs ethertype IPv6"],
        ),
        (
            ["create", "-s", "nosuch", "--in", "--proto", "tcp", "-p", "80"].map(String::from).to_vec(),
            vec!["no instance nosuch"],
        ),
    ];
    for (args, expect) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sg.refuses(&args, expect);
    }

    // Confirmed with --force, the whole range is accepted (and marked as confirmed).
    let before = sg.ls_rules("vm1").len();
    let out = sg.ok(&["create", "-s", "vm1", "--in", "--proto", "tcp", "-p", "1-65535", "--force"]);
    let id = out.trim();
    uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("create printed {out:?}: {e}"));
    let rules = sg.ls_rules("vm1");
    assert_eq!(rules.len(), before + 1);
    let rule = rules.iter().find(|r| r["id"] == id).expect("forced rule listed");
    assert_eq!((rule["port_min"].as_u64(), rule["port_max"].as_u64()), (Some(1), Some(65535)), "{rule}");
    let state = String::from_utf8(sg.state_bytes().unwrap()).unwrap();
    assert!(state.contains("allow_all_ports: true"), "{state}");
}

#[test]
fn rm_refuses_bad_prefixes_and_changes_nothing() {
    require_root!();
    let (_topo, eps, sg) = setup(2);
    // Two rules whose UUIDs share their first 8 characters (and more).
    let (one, two) = ("5ca1ab1e-0000-4000-8000-000000000001", "5ca1ab1e-0000-4000-8000-000000000002");
    let rule22 = "direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 22";
    sg.apply_yaml(
        &[
            "instances:".to_string(),
            "  - id: vm1".to_string(),
            format!("    interface: {}", eps[0].tap()),
            "    os: linux".to_string(),
            "    rules:".to_string(),
            format!("      - {{id: {one}, {rule22}}}"),
            "  - id: vm2".to_string(),
            format!("    interface: {}", eps[1].tap()),
            "    os: linux".to_string(),
            "    rules:".to_string(),
            format!("      - {{id: {two}, {rule22}}}"),
            "      - {direction: egress, ethertype: IPv4, protocol: any}".to_string(),
            String::new(),
        ]
        .join("\n"),
    );
    assert_eq!(sg.rule_ids("vm1"), [one]);

    let err = sg.refuses(&["rm", "5ca1ab1"], &["too short", "at least 8 characters"]);
    assert!(err.contains(one) && err.contains(two), "{err}");
    sg.refuses(&["rm", "deadbeef"], &["no rule with id starting `deadbeef`"]);
    sg.refuses(&["rm", "5ca1ab1e"], &["ambiguous", one, two, "instance vm1", "instance vm2"]);
    sg.refuses(&["rm", "5ca1ab1e-0000-4000-8000-00000000000"], &["ambiguous", one, two]);

    // A longer, unique prefix (any case) does it.
    let out = sg.ok(&["rm", &two[..36].to_ascii_uppercase()]);
    assert!(out.contains(&format!("deleted {two} from instance vm2")), "{out}");
    assert_eq!(sg.ls_rules("vm2").len(), 1);
    assert_eq!(sg.rule_ids("vm1"), [one]);
    // Now the 8-character prefix is unique.
    sg.ok(&["rm", "5CA1AB1E"]);
    assert!(sg.ls_rules("vm1").is_empty());
}

#[test]
fn apply_refuses_bad_files_and_changes_nothing() {
    require_root!();
    let (_topo, eps, sg) = setup(2);
    sg.apply_yaml(&format!("instances:\n  - {{id: vm1, interface: {}, os: linux}}\n", eps[0].tap()));
    let file = |name: &str, text: String| sg.write_file(name, &text).to_string_lossy().into_owned();

    let unknown = file(
        "unknown.yaml",
        format!("instances:\n  - id: vm1\n    interface: {}\n    os: linux\n    colour: red\n", eps[0].tap()),
    );
    sg.refuses(&["apply", "-f", &unknown], &[&format!("{unknown}:5:5: "), "unknown field `colour`"]);
    let unknown_rule_field = file(
        "unknown-rule.yaml",
        format!(
            "instances:\n  - id: vm1\n    interface: {}\n    os: linux\n    rules:\n      - direction: ingress\n        \
             ethertype: IPv4\n        protocol: tcp\n        port: 80\n",
            eps[0].tap()
        ),
    );
    sg.refuses(
        &["apply", "-f", &unknown_rule_field],
        &[&format!("{unknown_rule_field}:9:9: "), "unknown field `port`"],
    );
    let insecure = file(
        "insecure.yaml",
        format!(
            "instances:\n  - id: vm1\n    interface: {}\n    os: linux\n    rules:\n      - {{direction: ingress, \
             ethertype: IPv4, protocol: tcp, port_min: 22, cidr: 10.0.0.1/0}}\n",
            eps[0].tap()
        ),
    );
    sg.refuses(&["apply", "-f", &insecure], &[&format!("{insecure}:6:7: "), "insecure"]);
    let wide = file(
        "wide.yaml",
        format!(
            "instances:\n  - id: vm1\n    interface: {}\n    os: linux\n    rules:\n      - {{direction: ingress, \
             ethertype: IPv4, protocol: tcp, port_min: 1, port_max: 65535}}\n",
            eps[0].tap()
        ),
    );
    sg.refuses(&["apply", "-f", &wide], &["opens every port", "allow_all_ports"]);
    let twice = file(
        "twice.yaml",
        format!(
            "instances:\n  - {{id: vm1, interface: {0}, os: linux}}\n  - {{id: vm2, interface: {0}, os: linux}}\n",
            eps[0].tap()
        ),
    );
    sg.refuses(&["apply", "-f", &twice], &["both use interface"]);
    sg.refuses(&["apply", "-f", "/nonexistent/sg.yaml"], &["/nonexistent/sg.yaml", "cannot read"]);
    // Instance commands.
    sg.refuses(
        &["instance", "add", "vm1", "--iface", eps[1].tap(), "--os", "linux"],
        &["instance vm1 exists already"],
    );
    sg.refuses(
        &["instance", "add", "vm9", "--iface", "sgtnosuch0", "--os", "linux"],
        &["interface sgtnosuch0 does not exist"],
    );
    sg.refuses(
        &["instance", "add", "bad/id", "--iface", eps[1].tap(), "--os", "linux"],
        &["invalid instance id"],
    );
    sg.refuses(
        &["instance", "add", "vm2", "--iface", eps[0].tap(), "--os", "linux"],
        &["both use interface"],
    );
    sg.refuses(
        &["instance", "add", "vm2", "--iface", "bad/name", "--os", "linux"],
        &["invalid interface name"],
    );
    sg.refuses(&["instance", "rm", "vm9"], &["no instance vm9"]);
    sg.refuses(&["ls", "-s", "vm9"], &["no instance vm9"]);
}

#[test]
fn instance_and_rule_round_trip() {
    require_root!();
    let (_topo, eps, sg) = setup(2);
    sg.ok(&["instance", "add", "937648", "--iface", eps[0].tap(), "--os", "linux"]);
    sg.ok(&["instance", "add", "892486", "--iface", eps[1].tap(), "--os", "windows"]);
    assert_eq!(sg.links().len(), 4, "both taps attached: {:?}", sg.links());

    let listing = sg.ok(&["ls"]);
    for want in ["937648", "892486", eps[0].tap(), "windows"] {
        assert!(listing.contains(want), "{want} missing from:\n{listing}");
    }
    let instances = sg.ls_instances();
    let counts: Vec<(String, u64)> = instances
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i["rules"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, [("937648".to_string(), 5), ("892486".to_string(), 6)]);

    // The table: headers in order, one row per rule, each ending with the rule's id.
    for (id, n) in [("937648", 5), ("892486", 6)] {
        let table = sg.ok(&["ls", "-s", id]);
        let mut lines = table.lines().filter(|l| !l.trim().is_empty());
        let header = lines.next().unwrap_or_default();
        let positions: Vec<usize> = HEADERS
            .iter()
            .map(|h| header.find(h).unwrap_or_else(|| panic!("no {h:?} in {header:?}")))
            .collect();
        assert!(positions.is_sorted(), "headers out of order: {header:?}");
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), n, "{table}");
        let ids = sg.rule_ids(id);
        assert_eq!(ids.len(), n);
        for (row, rule_id) in rows.iter().zip(&ids) {
            assert!(row.trim_end().ends_with(rule_id.as_str()), "row {row:?} should end with {rule_id}");
        }
        assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), n, "ids not unique: {ids:?}");
    }
    let windows = sg.ls_rules("892486");
    assert!(windows.iter().any(|r| r["direction"] == "ingress" && r["port_min"] == 9833), "{windows:?}");

    // create -> listed -> rm by 8-character prefix -> gone.
    let out = sg.ok(&[
        "create",
        "-s",
        "937648",
        "--in",
        "--proto",
        "udp",
        "-p",
        "5000-5100",
        "--cidr",
        "192.0.2.0/24",
    ]);
    let id = out.trim().to_string();
    uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("create printed {out:?}: {e}"));
    let rules = sg.ls_rules("937648");
    assert_eq!(rules.len(), 6);
    let rule =
        rules.iter().find(|r| r["id"] == id.as_str()).unwrap_or_else(|| panic!("{id} not in {rules:?}"));
    assert_eq!(rule["protocol"], "udp");
    assert_eq!(rule["ethertype"], "IPv4");
    assert_eq!(rule["direction"], "ingress");
    assert_eq!((rule["port_min"].as_u64(), rule["port_max"].as_u64()), (Some(5000), Some(5100)));
    assert_eq!(rule["cidr"], "192.0.2.0/24");
    assert!(sg.ok(&["ls", "-s", "937648"]).contains(&id));
    // An IPv6 egress rule; the family follows --ipv6.
    let out6 = sg.ok(&["create", "-s", "892486", "--out", "--proto", "tcp", "-p", "25", "--ipv6"]);
    let rule6 = sg.ls_rules("892486").into_iter().find(|r| r["id"] == out6.trim()).expect("v6 rule listed");
    assert_eq!((rule6["ethertype"].as_str(), rule6["cidr"].as_str()), (Some("IPv6"), Some("::/0")));

    let out = sg.ok(&["rm", &id[..8]]);
    assert!(out.contains(&format!("deleted {id} from instance 937648")), "{out}");
    assert_eq!(sg.ls_rules("937648").len(), 5);
    assert!(!sg.ok(&["ls", "-s", "937648"]).contains(&id));
}

/// DAEMON BUG (fails until fixed in sg-daemon): `instance rm` of an attached instance
/// exits 1 with "`bpf_map_delete_elem` failed: No such file or directory" (the same
/// double unbind as `apply` without the instance; see e2e_enforcement.rs). The tap is
/// detached anyway, but state.yaml still lists the instance.
#[test]
fn instance_rm_stops_managing_the_instance() {
    require_root!();
    let (_topo, eps, sg) = setup(2);
    sg.ok(&["instance", "add", "vm1", "--iface", eps[0].tap(), "--os", "linux"]);
    sg.ok(&["instance", "add", "vm2", "--iface", eps[1].tap(), "--os", "windows"]);
    assert_eq!(sg.links().len(), 4, "both taps attached: {:?}", sg.links());
    sg.ok(&["instance", "rm", "vm1"]);
    let left: Vec<String> = sg.ls_instances().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(left, ["vm2"]);
    let idx = eps[1].tap_ifindex().unwrap();
    assert_eq!(sg.links(), [format!("tc-{idx}"), format!("xdp-{idx}")]);
    sg.ok(&["instance", "rm", "vm2"]);
    assert!(sg.ls_instances().is_empty());
    assert!(sg.links().is_empty(), "{:?}", sg.links());
}

/// DAEMON BUG (fails until fixed in sg-daemon): the `ls` table pads its columns with
/// `{:<16}` / `{:<8}`, but `InstanceId` and `Os` implement `Display` with
/// `f.write_str`, which ignores width, so the Instance and OS columns are not padded
/// and rows do not line up with the header (e.g. `937648 sgt…i1          linux     5`
/// under `Instance         Interface        OS       Rules`).
#[test]
fn instance_table_columns_line_up() {
    require_root!();
    let (_topo, eps, sg) = setup(1);
    sg.ok(&["instance", "add", "937648", "--iface", eps[0].tap(), "--os", "linux"]);
    let table = sg.ok(&["ls"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    let column = |name: &str| header.find(name).unwrap_or_else(|| panic!("no {name:?} in {header:?}"));
    assert_eq!(row.find(eps[0].tap()), Some(column("Interface")), "Interface column:\n{table}");
    assert_eq!(row.find("linux"), Some(column("OS")), "OS column:\n{table}");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    require_root!();
    let (_topo, eps, sg) = setup(2);
    let both = sg.write_file(
        "both.yaml",
        &format!(
            "instances:\n  - {{id: vm1, interface: {}, os: linux}}\n  - {{id: vm2, interface: {}, os: windows}}\n",
            eps[0].tap(),
            eps[1].tap()
        ),
    );
    let both = both.to_string_lossy();
    let before = sg.snapshot();
    let plan = sg.ok(&["apply", "-f", &both, "--dry-run"]);
    for want in ["instances: 2 added", "rules: 11 added", "+ vm1 ", "+ vm2 ", "dry run: nothing changed"] {
        assert!(plan.contains(want), "{want:?} missing from the plan:\n{plan}");
    }
    assert_eq!(sg.snapshot(), before);
    assert!(sg.state_bytes().is_none(), "a dry run stored a state");
    assert!(!sg.bpffs().exists(), "a dry run created {}", sg.bpffs().display());

    sg.apply_yaml(&format!("instances:\n  - {{id: vm1, interface: {}, os: linux}}\n", eps[0].tap()));
    let before = sg.snapshot();
    let plan = sg.ok(&["apply", "-f", &both, "--dry-run"]);
    for want in
        ["instances: 1 added, 0 removed, 0 changed, 1 unchanged", "rules: 6 added, 0 removed, 5 unchanged"]
    {
        assert!(plan.contains(want), "{want:?} missing from the plan:\n{plan}");
    }
    let only_vm2 = sg.write_file(
        "vm2.yaml",
        &format!("instances:\n  - {{id: vm2, interface: {}, os: windows}}\n", eps[1].tap()),
    );
    let plan = sg.ok(&["apply", "-f", &only_vm2.to_string_lossy(), "--dry-run"]);
    assert!(plan.contains("instances: 1 added, 1 removed"), "{plan}");
    assert!(plan.contains("remove instance: vm1"), "{plan}");
    assert_eq!(sg.snapshot(), before, "a dry run changed something");
}

#[test]
fn reapplying_a_file_keeps_rule_ids() {
    require_root!();
    let (_topo, eps, sg) = setup(2);
    let yaml = format!(
        "instances:\n  - {{id: vm1, interface: {}, os: linux}}\n  - id: vm2\n    interface: {}\n    os: windows\n    \
         rules:\n      - {{direction: ingress, ethertype: IPv6, protocol: tcp, port_min: 22, cidr: '2001:db8::/32'}}\n",
        eps[0].tap(),
        eps[1].tap()
    );
    sg.apply_yaml(&yaml);
    let ids = (sg.rule_ids("vm1"), sg.rule_ids("vm2"));
    assert_eq!((ids.0.len(), ids.1.len()), (5, 1));
    let plan = sg.apply_yaml(&yaml);
    assert!(plan.contains("instances: 0 added, 0 removed, 0 changed, 2 unchanged"), "{plan}");
    assert!(plan.contains("rules: 0 added, 0 removed, 6 unchanged"), "{plan}");
    assert_eq!((sg.rule_ids("vm1"), sg.rule_ids("vm2")), ids);

    // A changed file keeps the ids of the rules it still has.
    let changed = yaml.replace("os: windows\n", "os: windows\n    # comment\n").replace(
        "cidr: '2001:db8::/32'}\n",
        "cidr: '2001:db8::/32'}\n      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 80}\n",
    );
    let plan = sg.apply_yaml(&changed);
    assert!(plan.contains("rules: 1 added, 0 removed, 6 unchanged"), "{plan}");
    assert_eq!(sg.rule_ids("vm1"), ids.0);
    assert_eq!(sg.rule_ids("vm2")[0], ids.1[0]);
}

#[test]
fn concurrent_creates_are_all_kept() {
    require_root!();
    let (_topo, eps, sg) = setup(1);
    sg.ok(&["instance", "add", "vm1", "--iface", eps[0].tap(), "--os", "linux"]);
    let start = Barrier::new(2);
    let created: Vec<Vec<String>> = std::thread::scope(|s| {
        let workers: Vec<_> = [1000u16, 2000]
            .into_iter()
            .map(|base| {
                let (sg, start) = (&sg, &start);
                s.spawn(move || {
                    start.wait();
                    (0..10)
                        .map(|i| {
                            let port = (base + i).to_string();
                            let out = sg.ok(&["create", "-s", "vm1", "--in", "--proto", "tcp", "-p", &port]);
                            out.trim().to_string()
                        })
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("create worker panicked")).collect()
    });
    let rules = sg.ls_rules("vm1");
    assert_eq!(rules.len(), 5 + 20, "{rules:#?}");
    let listed: BTreeSet<String> = ids_of(&rules).into_iter().collect();
    for id in created.iter().flatten() {
        assert!(listed.contains(id), "created rule {id} was lost");
    }
    let ports: BTreeSet<u64> = rules.iter().filter_map(|r| r["port_min"].as_u64()).collect();
    for port in (1000..1010).chain(2000..2010) {
        assert!(ports.contains(&port), "port {port} missing: {ports:?}");
    }
}

#[test]
fn state_file_restores_enforcement_after_uninstall() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _ssh = tcp_server(&vm, 22, false).unwrap();
    let _web = tcp_server(&vm, 80, false).unwrap();
    let sg = SgDaemon::for_topology(&topo).unwrap();
    let probe = |port: u16, timeout_ms: u64| {
        tcp_probe(&remote, None, SocketAddr::new(vm.ip(false), port), Duration::from_millis(timeout_ms))
            .unwrap()
    };
    sg.ok(&["instance", "add", "vm", "--iface", vm.tap(), "--os", "linux"]);
    let custom = sg.ok(&["create", "-s", "vm", "--in", "--proto", "udp", "-p", "53"]);
    let ids = sg.rule_ids("vm");
    assert_eq!((probe(22, 3000), probe(80, 1200)), (TcpOutcome::Echoed, TcpOutcome::TimedOut));

    let out = sg.ok(&["uninstall"]);
    assert!(out.contains(&sg.bpffs().display().to_string()), "{out}");
    assert!(!sg.bpffs().exists(), "uninstall left {}", sg.bpffs().display());
    assert_eq!(probe(80, 3000), TcpOutcome::Echoed, "enforcement continued after uninstall");

    let state = sg.state_file();
    sg.ok(&["apply", "-f", &state.to_string_lossy()]);
    assert_eq!((probe(22, 3000), probe(80, 1200)), (TcpOutcome::Echoed, TcpOutcome::TimedOut));
    assert_eq!(sg.rule_ids("vm"), ids, "rule ids changed");
    assert!(ids.contains(&custom.trim().to_string()));
}
