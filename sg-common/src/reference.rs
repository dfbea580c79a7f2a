//! The reference classifier: a plain, obviously-correct statement of what the data plane
//! decides for a frame. The kernel programs are tested against it packet by packet.
//!
//! Parsing here is done with `etherparse` (an implementation independent of the
//! kernel's hand-written parser) plus a direct walk of IPv6 extension headers; rule
//! matching is a linear scan over the rules (the kernel uses compiled LPM tries).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6HeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice,
};

use crate::abi::{self, Reason};
use crate::model::{Direction, Rule};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Minimum L4 header bytes the classifier needs before it trusts a packet.
pub const fn l4_min_len(protocol: u8) -> usize {
    match protocol {
        abi::IPPROTO_TCP => 20,
        abi::IPPROTO_UDP => 8,
        abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6 => 8,
        _ => 0,
    }
}

/// ICMPv6 neighbour-discovery types passed without a rule in both directions: router
/// solicitation, neighbour solicitation and advertisement (RFC 4861). Router
/// advertisements and redirects are judged by direction (`abi::router_advert_verdict`).
pub const fn is_neighbour_discovery(icmpv6_type: u8) -> bool {
    matches!(icmpv6_type, 133 | 135 | 136)
}

/// The RA-guard verdict of a parsed packet (see `abi::router_advert_verdict`).
pub fn router_advert_verdict(direction: Direction, pkt: &IpPacket) -> Option<Reason> {
    if pkt.protocol != abi::IPPROTO_ICMPV6 || !pkt.src.is_ipv6() || pkt.fragment == abi::FRAG_REST {
        return None;
    }
    abi::router_advert_verdict(direction.code(), (pkt.port_key >> 8) as u8)
}

/// What classification needs from an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Destination port (tcp/udp), `type << 8 | code` (icmp/icmpv6), else 0.
    pub port_key: u16,
    /// Source port (tcp/udp), ICMP echo identifier, else 0.
    pub src_port: u16,
    /// TCP flags byte, 0 for other protocols.
    pub tcp_flags: u8,
    /// For ICMP errors: the quoted packet's tuple, when it could be read.
    pub inner: Option<InnerPacket>,
    /// `abi::FRAG_NONE`, `FRAG_FIRST`, or `FRAG_REST` (no transport header read).
    pub fragment: u8,
    /// Fragment identification, when fragmented.
    pub frag_id: u32,
}

/// The header of the packet an ICMP error quotes (the packet that caused it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Ports (tcp/udp) or the echo identifier in both (icmp echo), else 0.
    pub src_port: u16,
    pub dst_port: u16,
}

impl IpPacket {
    /// A packet of `protocol` between two addresses, with no transport fields read yet.
    pub fn new(src: IpAddr, dst: IpAddr, protocol: u8) -> Self {
        IpPacket {
            src,
            dst,
            protocol,
            port_key: 0,
            src_port: 0,
            tcp_flags: 0,
            inner: None,
            fragment: abi::FRAG_NONE,
            frag_id: 0,
        }
    }

    /// The remote end's address as seen from the instance.
    pub fn remote(&self, direction: Direction) -> IpAddr {
        match direction {
            Direction::Ingress => self.src,
            Direction::Egress => self.dst,
        }
    }
}

/// A parsed frame: an IP packet to classify, or a verdict parsing alone decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    Ip(IpPacket),
    Decided(Reason),
}

/// Parses an Ethernet frame the way the data plane must.
pub fn parse_frame(frame: &[u8]) -> Frame {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return Frame::Decided(Reason::DropMalformed);
    };
    let mut ether_type = eth.ether_type().0;
    let mut rest = &frame[eth.slice().len()..];
    for _ in 0..abi::MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Ok(vlan) = SingleVlanHeaderSlice::from_slice(rest) else {
            return Frame::Decided(Reason::DropMalformed);
        };
        ether_type = vlan.ether_type().0;
        rest = &rest[vlan.slice().len()..];
    }
    match ether_type {
        ETH_P_ARP => Frame::Decided(Reason::AllowInfra),
        ETH_P_IPV4 => parse_ipv4(rest),
        ETH_P_IPV6 => parse_ipv6(rest),
        _ => Frame::Decided(Reason::DropEtherType),
    }
}

fn parse_ipv4(bytes: &[u8]) -> Frame {
    let Ok(ip) = Ipv4HeaderSlice::from_slice(bytes) else {
        return Frame::Decided(Reason::DropMalformed);
    };
    if usize::from(ip.total_len()) < ip.slice().len() {
        return Frame::Decided(Reason::DropMalformed);
    }
    let src = IpAddr::V4(Ipv4Addr::from(ip.source()));
    let dst = IpAddr::V4(Ipv4Addr::from(ip.destination()));
    let id = u32::from(ip.identification());
    if ip.fragments_offset().value() != 0 {
        return rest_fragment(src, dst, ip.protocol().0, id);
    }
    let first = if ip.more_fragments() { abi::FRAG_FIRST } else { abi::FRAG_NONE };
    with_fragment(parse_l4(src, dst, ip.protocol().0, &bytes[ip.slice().len()..]), first, id)
}

fn parse_ipv6(bytes: &[u8]) -> Frame {
    let Ok(ip) = Ipv6HeaderSlice::from_slice(bytes) else {
        return Frame::Decided(Reason::DropMalformed);
    };
    let src = IpAddr::V6(Ipv6Addr::from(ip.source()));
    let dst = IpAddr::V6(Ipv6Addr::from(ip.destination()));
    let mut next = ip.next_header().0;
    let mut rest = &bytes[ip.slice().len()..];
    let (mut frag, mut frag_id) = (abi::FRAG_NONE, 0u32);
    for _ in 0..abi::MAX_IPV6_EXT_HEADERS {
        let len = match next {
            // hop-by-hop, routing, destination options: (hdr_ext_len + 1) * 8
            0 | 43 | 60 => match rest.get(1) {
                Some(l) => (usize::from(*l) + 1) * 8,
                None => return Frame::Decided(Reason::DropMalformed),
            },
            // fragment header: fixed 8 bytes
            44 => {
                let Some(h) = rest.get(..8) else {
                    return Frame::Decided(Reason::DropMalformed);
                };
                let field = u16::from_be_bytes([h[2], h[3]]);
                frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if field >> 3 != 0 {
                    return rest_fragment(src, dst, h[0], frag_id);
                }
                if field & 1 != 0 {
                    frag = abi::FRAG_FIRST;
                }
                8
            }
            // authentication header: (payload_len + 2) * 4
            51 => match rest.get(1) {
                Some(l) => (usize::from(*l) + 2) * 4,
                None => return Frame::Decided(Reason::DropMalformed),
            },
            _ => return with_fragment(parse_l4(src, dst, next, rest), frag, frag_id),
        };
        if rest.len() < len {
            return Frame::Decided(Reason::DropMalformed);
        }
        next = rest[0];
        rest = &rest[len..];
    }
    if matches!(next, 0 | 43 | 60 | 44 | 51) {
        return Frame::Decided(Reason::DropExtHeaders);
    }
    with_fragment(parse_l4(src, dst, next, rest), frag, frag_id)
}

/// A non-first fragment: addresses, protocol and identification only.
fn rest_fragment(src: IpAddr, dst: IpAddr, protocol: u8, frag_id: u32) -> Frame {
    Frame::Ip(IpPacket { fragment: abi::FRAG_REST, frag_id, ..IpPacket::new(src, dst, protocol) })
}

fn with_fragment(frame: Frame, fragment: u8, frag_id: u32) -> Frame {
    match frame {
        Frame::Ip(mut p) if fragment != abi::FRAG_NONE => {
            p.fragment = fragment;
            p.frag_id = frag_id;
            Frame::Ip(p)
        }
        other => other,
    }
}

fn parse_l4(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> Frame {
    if l4.len() < l4_min_len(protocol) {
        return Frame::Decided(Reason::DropMalformed);
    }
    let mut pkt = IpPacket::new(src, dst, protocol);
    match protocol {
        abi::IPPROTO_TCP => {
            let Ok(tcp) = TcpHeaderSlice::from_slice(l4) else {
                return Frame::Decided(Reason::DropMalformed);
            };
            pkt.src_port = tcp.source_port();
            pkt.port_key = tcp.destination_port();
            pkt.tcp_flags = l4[13];
        }
        abi::IPPROTO_UDP => {
            pkt.src_port = u16::from_be_bytes([l4[0], l4[1]]);
            pkt.port_key = u16::from_be_bytes([l4[2], l4[3]]);
        }
        abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6 => {
            if protocol == abi::IPPROTO_ICMPV6 && src.is_ipv6() && is_neighbour_discovery(l4[0]) {
                return Frame::Decided(Reason::AllowInfra);
            }
            pkt.port_key = u16::from_be_bytes([l4[0], l4[1]]);
            pkt.src_port = u16::from_be_bytes([l4[4], l4[5]]);
            if abi::is_icmp_error(protocol, l4[0]) {
                pkt.inner = parse_inner(&l4[8..]);
            }
        }
        _ => {}
    }
    Frame::Ip(pkt)
}

/// Reads the quoted header of an ICMP error: an IPv4 header (with options) or a bare
/// IPv6 header, then 8 bytes of its transport header. Anything else: `None` (the error
/// is then judged by the rules alone).
fn parse_inner(bytes: &[u8]) -> Option<InnerPacket> {
    let (src, dst, protocol, l4) = match bytes.first()? >> 4 {
        4 => {
            let ip = Ipv4HeaderSlice::from_slice(bytes).ok()?;
            let rest = &bytes[ip.slice().len()..];
            (IpAddr::V4(ip.source_addr()), IpAddr::V4(ip.destination_addr()), ip.protocol().0, rest)
        }
        6 => {
            let ip = Ipv6HeaderSlice::from_slice(bytes).ok()?;
            let rest = &bytes[ip.slice().len()..];
            (IpAddr::V6(ip.source_addr()), IpAddr::V6(ip.destination_addr()), ip.next_header().0, rest)
        }
        _ => return None,
    };
    let h = l4.get(..8)?;
    let (src_port, dst_port) = match protocol {
        abi::IPPROTO_TCP | abi::IPPROTO_UDP => {
            (u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]]))
        }
        abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6 => {
            let id = u16::from_be_bytes([h[4], h[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Some(InnerPacket { src, dst, protocol, src_port, dst_port })
}

/// The verdict of the rules alone for an IP packet: the index of the first rule that
/// allows it, or `None` (dropped for want of a rule).
pub fn first_matching_rule(rules: &[Rule], direction: Direction, pkt: &IpPacket) -> Option<usize> {
    let remote = pkt.remote(direction);
    rules.iter().position(|r| r.matches(direction, pkt.protocol, pkt.port_key, remote))
}

/// The full stateless verdict for a frame of a managed instance.
pub fn classify(rules: &[Rule], direction: Direction, frame: &[u8]) -> Reason {
    match parse_frame(frame) {
        Frame::Decided(reason) => reason,
        // Stateless: the rest of a fragmented packet has nothing to follow.
        Frame::Ip(pkt) if pkt.fragment == abi::FRAG_REST => Reason::DropFragment,
        Frame::Ip(pkt) if router_advert_verdict(direction, &pkt).is_some() => {
            router_advert_verdict(direction, &pkt).expect("checked")
        }
        Frame::Ip(pkt) => match first_matching_rule(rules, direction, &pkt) {
            Some(_) => Reason::AllowRule,
            None => Reason::DropNoRule,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Os, default_rules};
    use etherparse::PacketBuilder;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn tcp4(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src, dst, 64).tcp(40000, dport, 1, 1024).syn();
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        out
    }

    #[test]
    fn linux_defaults() {
        let rules = default_rules(Os::Linux);
        let v = |dport| classify(&rules, Direction::Ingress, &tcp4([1, 2, 3, 4], [10, 0, 0, 2], dport));
        assert_eq!(v(22), Reason::AllowRule);
        assert_eq!(v(443), Reason::AllowRule);
        assert_eq!(v(80), Reason::DropNoRule);
        assert_eq!(v(9833), Reason::DropNoRule);
        let win = default_rules(Os::Windows);
        assert_eq!(
            classify(&win, Direction::Ingress, &tcp4([1, 2, 3, 4], [10, 0, 0, 2], 9833)),
            Reason::AllowRule
        );
        // Egress any: everything leaves.
        assert_eq!(
            classify(&rules, Direction::Egress, &tcp4([10, 0, 0, 2], [1, 2, 3, 4], 80)),
            Reason::AllowRule
        );
    }

    #[test]
    fn truncation_at_every_boundary_is_malformed() {
        let rules = default_rules(Os::Linux);
        let full = tcp4([1, 2, 3, 4], [10, 0, 0, 2], 22);
        for len in 0..full.len() {
            assert_eq!(
                classify(&rules, Direction::Ingress, &full[..len]),
                Reason::DropMalformed,
                "len {len}"
            );
        }
    }

    #[test]
    fn non_first_fragment_is_dropped() {
        let mut f = tcp4([1, 2, 3, 4], [10, 0, 0, 2], 22);
        f[14 + 6] = 0x00;
        f[14 + 7] = 0x10; // offset 16 * 8 bytes
        assert_eq!(classify(&default_rules(Os::Linux), Direction::Ingress, &f), Reason::DropFragment);
    }

    #[test]
    fn arp_passes_unknown_ethertype_drops() {
        let mut f = vec![0u8; 60];
        f[12] = 0x08;
        f[13] = 0x06;
        assert_eq!(classify(&[], Direction::Ingress, &f), Reason::AllowInfra);
        f[12] = 0x88;
        f[13] = 0xcc; // LLDP
        assert_eq!(classify(&[], Direction::Ingress, &f), Reason::DropEtherType);
    }
}
