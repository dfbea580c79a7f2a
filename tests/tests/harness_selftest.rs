//! Self-test of the harness itself: plain routing, no eBPF. If these fail, every data
//! plane test built on the harness is meaningless, so they check both the positive
//! paths and that "blocked" outcomes (timeout, RST, ICMP error) are told apart.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sg_tests::*;

/// Generous for probes that must succeed: a veth answers in microseconds.
const OK: Duration = Duration::from_secs(3);

#[test]
fn instance_and_remote_reach_each_other() -> Result<()> {
    require_root!(Ok(()));
    let mut topo = Topology::new_unique()?;
    let vm = topo.add_instance("vm1")?;
    let client = topo.add_remote("client")?;
    let names: Vec<String> = topo.namespaces().iter().map(|ns| ns.name().to_string()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(topo.namespaces().iter().all(Netns::exists));
    assert!(vm.tap().len() <= 15 && vm.tap().starts_with(topo.prefix()));
    assert!(topo.host().ip(&["-o", "link", "show", "dev", vm.tap()])?.contains(vm.tap_mac()));
    assert!(vm.tap_ifindex()? > 1);

    let ssh4 = tcp_server(&vm, 22, false)?;
    let ssh6 = tcp_server(&vm, 22, true)?;
    let echo4 = udp_echo_server(&client, 5353, false)?;
    let _echo6 = udp_echo_server(&client, 5353, true)?;

    // TCP, both families; the server sees the client's real address (no NAT).
    assert!(tcp_connect(&client, vm.ipv4().into(), 22, OK), "remote -> instance v4");
    assert!(tcp_connect(&client, vm.ipv6().into(), 22, OK), "remote -> instance v6");
    assert_eq!(ssh4.peers().iter().map(SocketAddr::ip).collect::<Vec<_>>(), [IpAddr::from(client.ipv4())]);
    assert_eq!(ssh6.peers().iter().map(SocketAddr::ip).collect::<Vec<_>>(), [IpAddr::from(client.ipv6())]);

    // A closed port answers with a RST at once: false, fast, and reported as Refused.
    for v6 in [false, true] {
        let start = Instant::now();
        let outcome = tcp_probe(&client, None, SocketAddr::new(vm.ip(v6), 23), Duration::from_secs(5))?;
        assert_eq!(outcome, TcpOutcome::Refused, "closed port, v6={v6}");
        assert!(start.elapsed() < Duration::from_secs(1), "closed port took {:?}", start.elapsed());
        assert!(!tcp_connect(&client, vm.ip(v6), 23, Duration::from_secs(5)));
    }

    // ICMP both ways, both families.
    for v6 in [false, true] {
        assert!(ping(&client, vm.ip(v6), 1, OK), "remote -> instance ping v6={v6}");
        assert!(ping(&vm, client.ip(v6), 1, OK), "instance -> remote ping v6={v6}");
        assert_eq!(ping_probe(&vm, None, client.ip(v6), 3, OK)?, 3);
        // The host answers for its tap address too.
        assert!(ping(&vm, if v6 { vm.gateway_v6().into() } else { vm.gateway_v4().into() }, 1, OK));
    }

    // UDP echo, both families; a closed UDP port yields ICMP port unreachable.
    for v6 in [false, true] {
        assert!(udp_request(&vm, client.ip(v6), 5353, OK), "instance -> remote udp v6={v6}");
        let outcome = udp_probe(&vm, None, SocketAddr::new(client.ip(v6), 5354), OK)?;
        assert_eq!(outcome, UdpOutcome::Refused, "closed UDP port, v6={v6}");
    }
    assert!(echo4.peers().iter().all(|p| p.ip() == IpAddr::from(vm.ipv4())));

    // Teardown: servers first (they hold sockets in the namespaces), then namespaces.
    drop((ssh4, ssh6, echo4));
    drop(topo);
    let left: Vec<&String> = names.iter().filter(|n| Netns::named(n.as_str()).exists()).collect();
    ensure!(left.is_empty(), "namespaces left after drop: {left:?}");
    Ok(())
}

#[test]
fn remote_can_originate_from_extra_addresses() -> Result<()> {
    require_root!(Ok(()));
    let mut topo = Topology::new_unique()?;
    let vm = topo.add_instance("vm")?;
    let geo = topo.add_remote("geo")?;
    let server4 = tcp_server(&vm, 8080, false)?;
    let server6 = tcp_server(&vm, 8080, true)?;
    let _udp = udp_echo_server(&vm, 53, false)?;

    let v4 = geo.add_addr("203.0.113.7/32")?;
    let v6 = geo.add_addr("2001:db8:7::7/128")?;
    // A whole CIDR: the host routes all of 198.51.100.0/24 to the remote.
    let in_net = geo.add_addr("198.51.100.77/24")?;
    let in_net2 = geo.add_addr("198.51.100.78/24")?;

    for src in [v4, in_net, in_net2] {
        assert!(tcp_connect_from(&geo, src, vm.ipv4().into(), 8080, OK), "from {src}");
        assert!(udp_request_from(&geo, src, vm.ipv4().into(), 53, OK), "udp from {src}");
        assert!(ping_from(&geo, src, vm.ipv4().into(), 1, OK), "ping from {src}");
    }
    assert!(tcp_connect_from(&geo, v6, vm.ipv6().into(), 8080, OK));
    assert!(ping_from(&geo, v6, vm.ipv6().into(), 1, OK));

    let seen4: Vec<IpAddr> = server4.peers().iter().map(SocketAddr::ip).collect();
    assert_eq!(seen4, [v4, in_net, in_net2]);
    assert_eq!(server6.peers().iter().map(SocketAddr::ip).collect::<Vec<_>>(), [v6]);

    // Unassigned source addresses and family mismatches are harness errors, never "blocked".
    let err = tcp_probe(&geo, Some("192.0.2.1".parse()?), SocketAddr::new(vm.ipv4().into(), 8080), OK);
    assert!(format!("{:#}", err.unwrap_err()).contains("192.0.2.1"));
    assert!(tcp_probe(&geo, Some(v6), SocketAddr::new(vm.ipv4().into(), 8080), OK).is_err());
    Ok(())
}

#[test]
fn drops_time_out_and_icmp_errors_are_reported() -> Result<()> {
    require_root!(Ok(()));
    let mut topo = Topology::new_unique()?;
    let vm = topo.add_instance("vm")?;
    let client = topo.add_remote("c")?;
    let _tcp = tcp_server(&vm, 443, false)?;
    let _udp = udp_echo_server(&vm, 443, false)?;
    let _tcp6 = tcp_server(&vm, 443, true)?;
    assert!(tcp_connect(&client, vm.ipv4().into(), 443, OK));

    // A blackhole route in the host silently discards, like a dropping firewall.
    let host = topo.host();
    host.ip(&["route", "add", "blackhole", &format!("{}/32", vm.ipv4())])?;
    let timeout = Duration::from_millis(700);
    let start = Instant::now();
    let outcome = tcp_probe(&client, None, SocketAddr::new(vm.ipv4().into(), 443), timeout)?;
    let took = start.elapsed();
    assert_eq!(outcome, TcpOutcome::TimedOut);
    assert!(took >= timeout && took < timeout + Duration::from_secs(1), "took {took:?}");
    assert!(!tcp_connect(&client, vm.ipv4().into(), 443, timeout));
    assert_eq!(
        udp_probe(&client, None, SocketAddr::new(vm.ipv4().into(), 443), timeout)?,
        UdpOutcome::NoReply
    );
    assert!(!ping(&client, vm.ipv4().into(), 2, timeout));

    // An "unreachable" route makes the host answer with ICMP instead.
    host.ip(&["-6", "route", "add", "unreachable", &format!("{}/128", vm.ipv6())])?;
    let outcome = tcp_probe(&client, None, SocketAddr::new(vm.ipv6().into(), 443), OK)?;
    assert!(matches!(outcome, TcpOutcome::Unreachable(_)), "{outcome:?}");

    // Lifting the blackhole restores traffic: the probes left no broken state behind.
    host.ip(&["route", "del", "blackhole", &format!("{}/32", vm.ipv4())])?;
    assert!(tcp_connect(&client, vm.ipv4().into(), 443, OK));
    assert!(udp_request(&client, vm.ipv4().into(), 443, OK));
    Ok(())
}

#[test]
fn parallel_topologies_are_independent() -> Result<()> {
    require_root!(Ok(()));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| -> Result<()> {
                let mut topo = Topology::new_unique()?;
                let vm = topo.add_instance("vm")?;
                let r = topo.add_remote("r")?;
                // Same addresses in every topology: they are in distinct namespaces.
                ensure!(vm.ipv4().to_string() == "10.80.1.2" && r.ipv6().to_string() == "fd00:90:1::2");
                let _s = tcp_server(&vm, 22, false)?;
                ensure!(tcp_connect(&r, vm.ipv4().into(), 22, OK));
                topo.destroy()
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(())
}

#[test]
fn cleanup_stale_only_removes_dead_owners() -> Result<()> {
    require_root!(Ok(()));
    let live = Topology::new_unique()?;
    let dead = Netns::named(format!("{}-stale", unique_prefix()));
    let young = Netns::named(format!("{}-young", unique_prefix()));
    for ns in [&dead, &young] {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "add", ns.name()]);
        run_command_checked(cmd, DEFAULT_TIMEOUT)?;
    }
    // Owner pid above any pid_max: this one belongs to a run that is gone.
    dead.ip(&["link", "set", "dev", "lo", "alias", "sg-tests owner=4194305 start=1"])?;

    let removed = cleanup_stale(NS_PREFIX)?;
    assert!(removed.contains(&dead.name().to_string()), "{removed:?}");
    assert!(!dead.exists());
    // Unmarked but brand new (could be mid-creation): kept.
    assert!(young.exists(), "{removed:?}");
    // Ours, alive: kept.
    assert!(live.namespaces().iter().all(Netns::exists));
    assert!(removed.iter().all(|r| !r.starts_with(live.prefix())));

    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "del", young.name()]);
    run_command_checked(cmd, DEFAULT_TIMEOUT)?;
    assert!(cleanup_stale("eth").is_err(), "foreign prefixes are refused");
    Ok(())
}

#[test]
fn exec_spawn_and_errors() -> Result<()> {
    require_root!(Ok(()));
    let mut topo = Topology::new_unique()?;
    let vm = topo.add_instance("vm")?;

    let addrs = vm.ns().exec(&["ip", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(addrs.contains("10.80.1.2/24") && addrs.contains("fd00:80:1::2/64"), "{addrs}");
    assert_eq!(topo.host().exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])?.trim(), "1");
    assert_eq!(topo.host().sysctl_get("net.ipv6.conf.all.forwarding")?, "1");
    assert_eq!(vm.ns().sysctl_get("net.ipv4.ip_forward")?, "0", "only the host forwards");
    assert!(vm.ns().sysctl(&[("kernel.panic", "1")]).is_err(), "global sysctls are refused");

    // Failures name the command and carry its stderr.
    let err = vm.ns().exec(&["ip", "link", "show", "dev", "nosuchdev0"]).unwrap_err().to_string();
    assert!(
        err.contains("ip netns exec") && err.contains("nosuchdev0") && err.contains("exit status"),
        "{err}"
    );

    // Timeouts kill the command instead of hanging.
    let start = Instant::now();
    let err = vm.ns().exec_output(&["sleep", "10"], Duration::from_millis(200)).unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));

    // A spawned child runs in the namespace and dies with its guard.
    let mut child = vm.ns().spawn(&["sh", "-c", "ip -o link show dev eth0; exec sleep 100"])?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !child.stdout().contains("eth0") {
        ensure!(Instant::now() < deadline, "child printed nothing: {}", child.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.ensure_running()?;
    drop(child);
    ensure!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child {pid} survived its guard");

    // stop() returns the output of a child that exits on SIGTERM.
    let child = vm.ns().spawn(&["sh", "-c", "echo started; exec sleep 100"])?;
    std::thread::sleep(Duration::from_millis(200));
    let out = child.stop()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"));

    // In-process closures see the namespace's devices.
    let seen = vm.ns().run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default())?;
    assert!(seen.contains("eth0:"), "{seen}");
    let host_dev =
        topo.host().run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default())?;
    assert!(host_dev.contains(vm.tap()) && !host_dev.contains("eth0:"), "{host_dev}");
    assert!(Netns::named("sgt-missing-ns").run(|| ()).is_err());
    topo.destroy().context("explicit destroy")?;
    Ok(())
}
