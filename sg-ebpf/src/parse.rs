//! Header parsing, failing closed: anything the parser cannot read to the end of the
//! headers the classifier needs is `DropMalformed`. The reference twin is
//! `sg_common::reference::parse_frame`; the two must agree on every frame.
use core::mem::size_of;

use sg_common::abi::{
    FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_IPV6_EXT_HEADERS, Reason,
};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// The packet's bytes: `[start, end)` as the context gives them.
pub struct Bounds {
    pub start: usize,
    pub end: usize,
}

impl Bounds {
    /// Reads a `T` at `offset`, or `None` past the end. Every packet read goes here so
    /// the verifier sees one bounds check per access.
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }

    #[inline(always)]
    fn has(&self, offset: usize, len: usize) -> bool {
        self.start + offset + len <= self.end
    }

    #[inline(always)]
    fn be16(&self, offset: usize) -> Option<u16> {
        self.load::<u16>(offset).map(u16::from_be)
    }
}

/// What the classifier needs from an IP packet. Addresses are IPv4 in the first four
/// bytes (rest zero) or IPv6.
pub struct Meta {
    pub family: u8,
    pub protocol: u8,
    /// Destination port (tcp/udp), `type << 8 | code` (icmp/icmpv6), else 0.
    pub port_key: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

pub enum Parsed {
    Ip(Meta),
    Decided(Reason),
}

#[inline(always)]
pub fn parse(b: &Bounds) -> Parsed {
    match parse_inner(b) {
        Ok(meta) => Parsed::Ip(meta),
        Err(reason) => Parsed::Decided(reason),
    }
}

const MALFORMED: Reason = Reason::DropMalformed;

#[inline(always)]
fn parse_inner(b: &Bounds) -> Result<Meta, Reason> {
    let mut ether_type = b.be16(12).ok_or(MALFORMED)?;
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner), unrolled by hand so offsets
    // stay constants for the verifier.
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = b.be16(off + 2).ok_or(MALFORMED)?;
        off += 4;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            ether_type = b.be16(off + 2).ok_or(MALFORMED)?;
            off += 4;
        }
    }
    match ether_type {
        ETH_P_ARP => Err(Reason::AllowInfra),
        ETH_P_IPV4 => parse_ipv4(b, off),
        ETH_P_IPV6 => parse_ipv6(b, off),
        _ => Err(Reason::DropEtherType),
    }
}

#[inline(always)]
fn parse_ipv4(b: &Bounds, off: usize) -> Result<Meta, Reason> {
    let ver_ihl: u8 = b.load(off).ok_or(MALFORMED)?;
    if ver_ihl >> 4 != 4 {
        return Err(MALFORMED);
    }
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ihl < 20 || !b.has(off, ihl) {
        return Err(MALFORMED);
    }
    let total_len = usize::from(b.be16(off + 2).ok_or(MALFORMED)?);
    if total_len < ihl {
        return Err(MALFORMED);
    }
    let frag = b.be16(off + 6).ok_or(MALFORMED)?;
    if frag & 0x1fff != 0 {
        return Err(Reason::DropFragment);
    }
    let protocol: u8 = b.load(off + 9).ok_or(MALFORMED)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&b.load::<[u8; 4]>(off + 12).ok_or(MALFORMED)?);
    dst[..4].copy_from_slice(&b.load::<[u8; 4]>(off + 16).ok_or(MALFORMED)?);
    let mut meta = Meta { family: FAMILY_V4, protocol, port_key: 0, src, dst };
    parse_l4(b, off + ihl, &mut meta)?;
    Ok(meta)
}

#[inline(always)]
fn parse_ipv6(b: &Bounds, off: usize) -> Result<Meta, Reason> {
    let ver: u8 = b.load(off).ok_or(MALFORMED)?;
    if ver >> 4 != 6 || !b.has(off, 40) {
        return Err(MALFORMED);
    }
    let mut next: u8 = b.load(off + 6).ok_or(MALFORMED)?;
    let src: [u8; 16] = b.load(off + 8).ok_or(MALFORMED)?;
    let dst: [u8; 16] = b.load(off + 24).ok_or(MALFORMED)?;
    let mut l4 = off + 40;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                (usize::from(b.load::<u8>(l4 + 1).ok_or(MALFORMED)?) + 1) * 8
            }
            NEXTHDR_FRAGMENT => {
                if !b.has(l4, 8) {
                    return Err(MALFORMED);
                }
                if b.be16(l4 + 2).ok_or(MALFORMED)? >> 3 != 0 {
                    return Err(Reason::DropFragment);
                }
                8
            }
            NEXTHDR_AUTH => (usize::from(b.load::<u8>(l4 + 1).ok_or(MALFORMED)?) + 2) * 4,
            _ => break,
        };
        if !b.has(l4, len) {
            return Err(MALFORMED);
        }
        next = b.load(l4).ok_or(MALFORMED)?;
        l4 += len;
        walked += 1;
    }
    if walked == MAX_IPV6_EXT_HEADERS
        && matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT | NEXTHDR_AUTH)
    {
        return Err(Reason::DropExtHeaders);
    }
    let mut meta = Meta { family: FAMILY_V6, protocol: next, port_key: 0, src, dst };
    parse_l4(b, l4, &mut meta)?;
    Ok(meta)
}

#[inline(always)]
fn parse_l4(b: &Bounds, l4: usize, meta: &mut Meta) -> Result<(), Reason> {
    match meta.protocol {
        IPPROTO_TCP => {
            let doff: u8 = b.load(l4 + 12).ok_or(MALFORMED)?;
            let hlen = usize::from(doff >> 4) * 4;
            if !b.has(l4, 20) || hlen < 20 || !b.has(l4, hlen) {
                return Err(MALFORMED);
            }
            meta.port_key = b.be16(l4 + 2).ok_or(MALFORMED)?;
        }
        IPPROTO_UDP => {
            if !b.has(l4, 8) {
                return Err(MALFORMED);
            }
            meta.port_key = b.be16(l4 + 2).ok_or(MALFORMED)?;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if !b.has(l4, 8) {
                return Err(MALFORMED);
            }
            let icmp_type: u8 = b.load(l4).ok_or(MALFORMED)?;
            // Neighbour discovery (RS, RA, NS, NA): the instance needs it to exist on
            // the network. Redirect (137) is not passed.
            if meta.protocol == IPPROTO_ICMPV6 && meta.family == FAMILY_V6 && (133..=136).contains(&icmp_type) {
                return Err(Reason::AllowInfra);
            }
            meta.port_key = b.be16(l4).ok_or(MALFORMED)?;
        }
        _ => {}
    }
    Ok(())
}
