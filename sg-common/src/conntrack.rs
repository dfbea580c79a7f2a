//! Reference model of the connection tracker: the same state machine as the kernel's
//! (`sg-ebpf/src/conntrack.rs`), written plainly over hash maps, so tests can replay a
//! packet sequence through both and compare every verdict.
//!
//! Semantics (also in the README):
//! - A packet a rule allows may open a flow: a TCP SYN (without ACK), any UDP or
//!   other-protocol packet, an ICMP/ICMPv6 echo request. Flows are keyed from the
//!   instance's side, so the reply direction finds the same entry.
//! - Packets of a live flow pass without a rule (`AllowTracked`), subject to:
//!   TCP follows SYN -> SYN-ACK -> ACK (established) -> FIN / RST; a reply that the
//!   state does not explain (a bare ACK to a SYN, a SYN from the other side) is judged
//!   by the rules instead. An echo *request* never rides an entry, only replies do.
//! - ICMP errors quoting a tracked flow pass to its endpoint (`AllowRelated`).
//! - An entry checked under an older policy is re-validated: the opening packet is
//!   re-classified under the current rules; if no rule allows it any more the entry is
//!   deleted and the packet is judged by the rules (`DropRevoked` when they drop it).
//! - Unconfirmed flows (TCP before the handshake completes, others before a reply)
//!   live apart from confirmed ones, so floods of new flows cannot evict established
//!   ones. Entries idle longer than their state's timeout are treated as absent.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::abi::{self, CtEntry, CtKey, CtTimeouts, FragKey, Reason};
use crate::model::{Direction, Rule};
use crate::reference::{Frame, InnerPacket, IpPacket, first_matching_rule, parse_frame};

/// Kernel-side direction code.
fn dir_code(d: Direction) -> u8 {
    d.code()
}

fn opposite(d: Direction) -> Direction {
    match d {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

fn addr16(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn family(a: &IpAddr) -> u8 {
    if a.is_ipv4() { abi::FAMILY_V4 } else { abi::FAMILY_V6 }
}

/// Builds the instance-side key of a packet travelling in `direction`.
fn key_of(
    ifindex: u32,
    direction: Direction,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    sport: u16,
    dport: u16,
) -> CtKey {
    let (inst, remote, p_inst, p_remote) = match direction {
        Direction::Egress => (src, dst, sport, dport),
        Direction::Ingress => (dst, src, dport, sport),
    };
    CtKey {
        ifindex,
        family: family(&src),
        protocol,
        port_inst: p_inst,
        port_remote: p_remote,
        _pad: 0,
        addr_inst: addr16(inst),
        addr_remote: addr16(remote),
    }
}

fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    matches!(
        (protocol, icmp_type),
        (abi::IPPROTO_ICMP, abi::ICMP_ECHO_REQUEST | abi::ICMP_ECHO_REPLY)
            | (abi::IPPROTO_ICMPV6, abi::ICMPV6_ECHO_REQUEST | abi::ICMPV6_ECHO_REPLY)
    )
}

fn is_echo_request(protocol: u8, icmp_type: u8) -> bool {
    matches!(
        (protocol, icmp_type),
        (abi::IPPROTO_ICMP, abi::ICMP_ECHO_REQUEST) | (abi::IPPROTO_ICMPV6, abi::ICMPV6_ECHO_REQUEST)
    )
}

/// The flow key of a packet, `None` for packets that are never tracked (ICMP other
/// than echo).
pub fn flow_key(ifindex: u32, direction: Direction, pkt: &IpPacket) -> Option<CtKey> {
    let (sport, dport) = match pkt.protocol {
        abi::IPPROTO_TCP | abi::IPPROTO_UDP => (pkt.src_port, pkt.port_key),
        abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6 => {
            if !is_echo(pkt.protocol, (pkt.port_key >> 8) as u8) {
                return None;
            }
            (pkt.src_port, pkt.src_port)
        }
        _ => (0, 0),
    };
    Some(key_of(ifindex, direction, pkt.src, pkt.dst, pkt.protocol, sport, dport))
}

/// The key of the flow an ICMP error travelling in `direction` is about.
pub fn related_key(ifindex: u32, direction: Direction, inner: &InnerPacket) -> CtKey {
    key_of(ifindex, opposite(direction), inner.src, inner.dst, inner.protocol, inner.src_port, inner.dst_port)
}

/// Whether the opening packet of `entry` is still allowed by `rules`.
pub fn still_allowed(rules: &[Rule], key: &CtKey, entry: &CtEntry) -> bool {
    let origin = if entry.origin == abi::DIR_INGRESS { Direction::Ingress } else { Direction::Egress };
    let remote = if key.family == abi::FAMILY_V4 {
        IpAddr::from([key.addr_remote[0], key.addr_remote[1], key.addr_remote[2], key.addr_remote[3]])
    } else {
        IpAddr::from(key.addr_remote)
    };
    rules.iter().any(|r| r.matches(origin, key.protocol, entry.orig_port_key, remote))
}

/// What the tracker makes of a packet of a live entry.
enum Step {
    /// Passes; the entry moves to this state.
    Ride(u8),
    /// Not explained by the entry: judged by the rules.
    Unexplained,
}

/// The state machine on one packet of a live flow.
pub fn step(entry: &CtEntry, is_origin: bool, pkt: &IpPacket) -> Option<u8> {
    match step_inner(entry, is_origin, pkt) {
        Step::Ride(s) => Some(s),
        Step::Unexplained => None,
    }
}

fn step_inner(entry: &CtEntry, is_origin: bool, pkt: &IpPacket) -> Step {
    use abi::*;
    let state = entry.state;
    match pkt.protocol {
        IPPROTO_TCP => {
            let f = pkt.tcp_flags;
            let syn = f & TCP_SYN != 0 && f & TCP_ACK == 0;
            let synack = f & TCP_SYN != 0 && f & TCP_ACK != 0;
            let rst = f & TCP_RST != 0;
            let fin = f & TCP_FIN != 0;
            if syn {
                return if is_origin && matches!(state, CT_TCP_SYN_SENT | CT_TCP_SYN_RECV) {
                    Step::Ride(state)
                } else {
                    Step::Unexplained
                };
            }
            match state {
                CT_TCP_SYN_SENT => {
                    if rst {
                        Step::Ride(CT_TCP_CLOSED)
                    } else if !is_origin && synack {
                        Step::Ride(CT_TCP_SYN_RECV)
                    } else {
                        Step::Unexplained
                    }
                }
                CT_TCP_SYN_RECV => {
                    if rst {
                        Step::Ride(CT_TCP_CLOSED)
                    } else if is_origin && f & TCP_ACK != 0 && f & TCP_SYN == 0 {
                        Step::Ride(if fin { CT_TCP_CLOSING } else { CT_TCP_ESTABLISHED })
                    } else if !is_origin && synack {
                        Step::Ride(state)
                    } else {
                        Step::Unexplained
                    }
                }
                CT_TCP_ESTABLISHED => Step::Ride(if rst {
                    CT_TCP_CLOSED
                } else if fin {
                    CT_TCP_CLOSING
                } else {
                    state
                }),
                CT_TCP_CLOSING => Step::Ride(if rst { CT_TCP_CLOSED } else { state }),
                _ => Step::Unexplained,
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let request = is_echo_request(pkt.protocol, (pkt.port_key >> 8) as u8);
            match (is_origin, request) {
                (true, true) => Step::Ride(state),
                (false, false) => Step::Ride(CT_REPLIED),
                _ => Step::Unexplained,
            }
        }
        _ => Step::Ride(if is_origin { state } else { CT_REPLIED }),
    }
}

/// Whether a state lives in the confirmed table.
/// A TCP SYN without ACK: it can only open a flow (or repeat its opening).
pub fn is_pure_syn(pkt: &IpPacket) -> bool {
    pkt.protocol == abi::IPPROTO_TCP && pkt.tcp_flags & (abi::TCP_SYN | abi::TCP_ACK) == abi::TCP_SYN
}

pub fn is_confirmed(protocol: u8, state: u8) -> bool {
    use abi::*;
    match protocol {
        IPPROTO_TCP => matches!(state, CT_TCP_ESTABLISHED | CT_TCP_CLOSING | CT_TCP_CLOSED),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => false,
        _ => state == CT_REPLIED,
    }
}

/// The state a new flow opened by `pkt` starts in, `None` if the packet cannot open one.
pub fn opening_state(pkt: &IpPacket) -> Option<u8> {
    use abi::*;
    match pkt.protocol {
        IPPROTO_TCP => (pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN).then_some(CT_TCP_SYN_SENT),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            is_echo_request(pkt.protocol, (pkt.port_key >> 8) as u8).then_some(CT_UNREPLIED)
        }
        _ => Some(CT_UNREPLIED),
    }
}

/// Reference of the geo block for one instance: ingress packets of `protocol` to one
/// of `ports` from a `blocked` network are dropped unless the source is `exempt`.
#[derive(Clone, Debug, Default)]
pub struct GeoModel {
    pub protocol: u8,
    pub ports: Vec<crate::model::PortRange>,
    pub blocked: Vec<ipnet::IpNet>,
    pub exempt: Vec<ipnet::IpNet>,
}

impl GeoModel {
    pub fn blocks(&self, pkt: &IpPacket) -> bool {
        pkt.protocol == self.protocol
            && self.ports.iter().any(|r| r.contains(pkt.port_key))
            && self.blocked.iter().any(|n| n.contains(&pkt.src))
            && !self.exempt.iter().any(|n| n.contains(&pkt.src))
    }
}

/// The reference tracker for one host: unbounded maps (no LRU eviction).
#[derive(Clone, Debug)]
pub struct Tracker {
    pub timeouts: CtTimeouts,
    pub confirmed: HashMap<CtKey, CtEntry>,
    pub unconfirmed: HashMap<CtKey, CtEntry>,
    /// Allowed first fragments -> when.
    pub fragments: HashMap<FragKey, u64>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            timeouts: CtTimeouts::DEFAULT,
            confirmed: HashMap::new(),
            unconfirmed: HashMap::new(),
            fragments: HashMap::new(),
        }
    }
}

fn frag_key(ifindex: u32, pkt: &IpPacket) -> FragKey {
    FragKey {
        ifindex,
        family: family(&pkt.src),
        protocol: pkt.protocol,
        _pad: 0,
        id: pkt.frag_id,
        src: addr16(pkt.src),
        dst: addr16(pkt.dst),
    }
}

impl Tracker {
    fn live(&self, key: &CtKey, now_ns: u64) -> Option<(bool, CtEntry)> {
        let alive = |e: &CtEntry| {
            now_ns.saturating_sub(e.last_seen_ns)
                <= u64::from(self.timeouts.for_state(key.protocol, e.state)) * 1_000_000_000
        };
        if let Some(e) = self.confirmed.get(key).filter(|e| alive(e)) {
            return Some((true, *e));
        }
        self.unconfirmed.get(key).filter(|e| alive(e)).map(|e| (false, *e))
    }

    fn store(&mut self, key: CtKey, entry: CtEntry) {
        if is_confirmed(key.protocol, entry.state) {
            self.unconfirmed.remove(&key);
            self.confirmed.insert(key, entry);
        } else {
            self.confirmed.remove(&key);
            self.unconfirmed.insert(key, entry);
        }
    }

    fn remove(&mut self, key: &CtKey) {
        self.confirmed.remove(key);
        self.unconfirmed.remove(key);
    }

    /// The verdict for one frame of interface `ifindex` bound to `policy_id` (`rules`).
    pub fn process(
        &mut self,
        ifindex: u32,
        policy_id: u32,
        rules: &[Rule],
        direction: Direction,
        frame: &[u8],
        now_ns: u64,
    ) -> Reason {
        self.process_with_geo(ifindex, policy_id, rules, None, direction, frame, now_ns)
    }

    /// Like [`Tracker::process`], with the instance's geo block (when it applies).
    #[allow(clippy::too_many_arguments)]
    pub fn process_with_geo(
        &mut self,
        ifindex: u32,
        policy_id: u32,
        rules: &[Rule],
        geo: Option<&GeoModel>,
        direction: Direction,
        frame: &[u8],
        now_ns: u64,
    ) -> Reason {
        let pkt = match parse_frame(frame) {
            Frame::Decided(reason) => return reason,
            Frame::Ip(pkt) => pkt,
        };
        // The rest of a fragmented packet follows its first fragment.
        if pkt.fragment == abi::FRAG_REST {
            let key = frag_key(ifindex, &pkt);
            return match self.fragments.get(&key) {
                Some(&t) if now_ns.saturating_sub(t) <= abi::FRAG_TIMEOUT_NS => Reason::AllowFragment,
                _ => Reason::DropFragment,
            };
        }
        if let Some(reason) = crate::reference::router_advert_verdict(direction, &pkt) {
            return reason;
        }
        // The geo block wins over rules and tracked flows alike.
        let reason = if direction == Direction::Ingress && geo.is_some_and(|g| g.blocks(&pkt)) {
            Reason::DropGeo
        } else {
            self.process_packet(ifindex, policy_id, rules, direction, &pkt, now_ns)
        };
        if pkt.fragment == abi::FRAG_FIRST && reason.is_allow() {
            self.fragments.insert(frag_key(ifindex, &pkt), now_ns);
        }
        reason
    }

    pub fn process_packet(
        &mut self,
        ifindex: u32,
        policy_id: u32,
        rules: &[Rule],
        direction: Direction,
        pkt: &IpPacket,
        now_ns: u64,
    ) -> Reason {
        // A TCP SYN the rules refuse is dropped without consulting the flows: a tracked
        // SYN (a retransmission from the side that opened the flow) was allowed by
        // these same rules when it opened the flow, so it can only be refused after a
        // rule change, which revokes the flow anyway (its next packet finds it so).
        // Spares a SYN flood the flow lookups.
        if is_pure_syn(pkt) && first_matching_rule(rules, direction, pkt).is_none() {
            return Reason::DropNoRule;
        }
        let mut revoked = false;
        // ICMP errors about a tracked flow.
        if let Some(inner) = &pkt.inner {
            let key = related_key(ifindex, direction, inner);
            if let Some((_, entry)) = self.live(&key, now_ns) {
                if entry.policy_id == policy_id || still_allowed(rules, &key, &entry) {
                    return Reason::AllowRelated;
                }
                self.remove(&key);
                revoked = true;
            }
        }
        let key = flow_key(ifindex, direction, pkt);
        if let Some(key) = key
            && let Some((_, mut entry)) = self.live(&key, now_ns)
        {
            let mut valid = true;
            if entry.policy_id != policy_id {
                if still_allowed(rules, &key, &entry) {
                    entry.policy_id = policy_id;
                    self.store(key, entry);
                } else {
                    self.remove(&key);
                    revoked = true;
                    valid = false;
                }
            }
            if valid && let Some(state) = step(&entry, entry.origin == dir_code(direction), pkt) {
                entry.state = state;
                entry.last_seen_ns = now_ns;
                self.store(key, entry);
                return Reason::AllowTracked;
            }
        }
        if first_matching_rule(rules, direction, pkt).is_none() {
            return if revoked { Reason::DropRevoked } else { Reason::DropNoRule };
        }
        if let (Some(key), Some(state)) = (key, opening_state(pkt)) {
            let entry = CtEntry {
                last_seen_ns: now_ns,
                created_ns: now_ns,
                policy_id,
                orig_port_key: pkt.port_key,
                origin: dir_code(direction),
                state,
            };
            self.store(key, entry);
        }
        Reason::AllowRule
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Os, default_rules};
    use crate::reference::IpPacket;

    const INST: &str = "10.0.0.2";
    const REMOTE: &str = "198.51.100.9";

    fn tcp(dir: Direction, sport: u16, dport: u16, flags: u8) -> IpPacket {
        let (src, dst) = match dir {
            Direction::Egress => (INST, REMOTE),
            Direction::Ingress => (REMOTE, INST),
        };
        IpPacket {
            port_key: dport,
            src_port: sport,
            tcp_flags: flags,
            ..IpPacket::new(src.parse().unwrap(), dst.parse().unwrap(), abi::IPPROTO_TCP)
        }
    }

    #[test]
    fn outbound_tcp_handshake_replies_ride() {
        use Direction::*;
        let rules = default_rules(Os::Linux);
        let mut t = Tracker::default();
        let mut go = |d, p: IpPacket| t.process_packet(3, 1, &rules, d, &p, 1);
        assert_eq!(go(Egress, tcp(Egress, 40000, 80, abi::TCP_SYN)), Reason::AllowRule);
        // A bare ACK from the remote is not explained by SYN_SENT.
        assert_eq!(go(Ingress, tcp(Ingress, 80, 40000, abi::TCP_ACK)), Reason::DropNoRule);
        assert_eq!(go(Ingress, tcp(Ingress, 80, 40000, abi::TCP_SYN | abi::TCP_ACK)), Reason::AllowTracked);
        assert_eq!(go(Egress, tcp(Egress, 40000, 80, abi::TCP_ACK)), Reason::AllowTracked);
        assert_eq!(go(Ingress, tcp(Ingress, 80, 40000, abi::TCP_ACK)), Reason::AllowTracked);
        // The remote cannot open its own connection to port 80.
        assert_eq!(go(Ingress, tcp(Ingress, 5555, 80, abi::TCP_SYN)), Reason::DropNoRule);
        assert_eq!(t.confirmed.len(), 1);
    }

    #[test]
    fn revoked_rule_cuts_the_flow() {
        use Direction::*;
        let rules = default_rules(Os::Linux);
        let mut t = Tracker::default();
        for (d, f) in
            [(Ingress, abi::TCP_SYN), (Egress, abi::TCP_SYN | abi::TCP_ACK), (Ingress, abi::TCP_ACK)]
        {
            let p = if d == Ingress { tcp(d, 5000, 22, f) } else { tcp(d, 22, 5000, f) };
            assert!(t.process_packet(3, 1, &rules, d, &p, 1).is_allow());
        }
        // Same rules under a new policy id: still allowed.
        assert_eq!(
            t.process_packet(3, 2, &rules, Egress, &tcp(Egress, 22, 5000, abi::TCP_ACK), 2),
            Reason::AllowTracked
        );
        // Port 22 rule removed: the next packet, either way, is cut.
        let narrowed: Vec<Rule> =
            rules.iter().filter(|r| r.ports.is_none_or(|p| p.min != 22)).cloned().collect();
        assert_eq!(
            t.process_packet(3, 3, &narrowed, Ingress, &tcp(Ingress, 5000, 22, abi::TCP_ACK), 3),
            Reason::DropRevoked
        );
        assert!(t.confirmed.is_empty());
    }

    #[test]
    fn expired_entries_are_absent() {
        use Direction::*;
        let rules = default_rules(Os::Linux);
        let mut t = Tracker::default();
        let mut udp = tcp(Egress, 4000, 53, 0);
        udp.protocol = abi::IPPROTO_UDP;
        assert_eq!(t.process_packet(3, 1, &rules, Egress, &udp, 0), Reason::AllowRule);
        let mut reply = tcp(Ingress, 53, 4000, 0);
        reply.protocol = abi::IPPROTO_UDP;
        assert_eq!(t.process_packet(3, 1, &rules, Ingress, &reply, 29_000_000_000), Reason::AllowTracked);
        // Replied: the stream timeout (180 s) applies now.
        assert_eq!(t.process_packet(3, 1, &rules, Ingress, &reply, 200_000_000_000), Reason::AllowTracked);
        assert_eq!(t.process_packet(3, 1, &rules, Ingress, &reply, 400_000_000_001), Reason::DropNoRule);
    }
}
