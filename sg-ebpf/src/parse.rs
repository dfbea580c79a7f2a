//! Header parsing, failing closed: anything the parser cannot read to the end of the
//! headers the classifier needs is `DropMalformed`. The reference twin is
//! `sg_common::reference::parse_frame`; the two must agree on every frame.
use core::mem::size_of;

use sg_common::abi::{
    FAMILY_V4, FAMILY_V6, FRAG_FIRST, FRAG_NONE, FRAG_REST, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, MAX_IPV6_EXT_HEADERS, Reason, is_icmp_error,
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
/// bytes (rest zero) or IPv6; they come first and 8-aligned, so the classifier reads
/// each as two 64-bit words instead of sixteen bytes.
#[repr(C, align(8))]
pub struct Meta {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub family: u8,
    pub protocol: u8,
    /// Destination port (tcp/udp), `type << 8 | code` (icmp/icmpv6), else 0.
    pub port_key: u16,
    /// Source port (tcp/udp), ICMP identifier (bytes 4-5), else 0.
    pub src_port: u16,
    /// TCP flags, else 0.
    pub tcp_flags: u8,
    /// `FRAG_NONE`, `FRAG_FIRST` or `FRAG_REST` (no transport header parsed).
    pub frag: u8,
    /// Fragment identification (when `frag != FRAG_NONE`).
    pub frag_id: u32,
    /// For ICMP errors: the quoted packet (`inner.valid == 0` when absent/unreadable).
    pub inner: Inner,
}

/// The packet an ICMP error quotes (sent by the error's recipient).
pub struct Inner {
    pub valid: u8,
    pub family: u8,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Meta {
    /// The source address as two native-order words (its bytes 0-7 and 8-15).
    #[inline(always)]
    pub fn src_words(&self) -> (u64, u64) {
        Self::words(&self.src)
    }

    /// The destination address as two native-order words.
    #[inline(always)]
    pub fn dst_words(&self) -> (u64, u64) {
        Self::words(&self.dst)
    }

    /// The address that [`Meta::src_words`] / [`Meta::dst_words`] gave as words.
    #[inline(always)]
    pub fn addr_of_words(a: u64, b: u64) -> [u8; 16] {
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&a.to_ne_bytes());
        addr[8..].copy_from_slice(&b.to_ne_bytes());
        addr
    }

    #[inline(always)]
    fn words(addr: &[u8; 16]) -> (u64, u64) {
        let p = addr.as_ptr() as *const u64;
        // SAFETY: only called with `src` or `dst`, 8-aligned by `repr(align(8))` and
        // at offsets 0 and 16.
        unsafe { (p.read(), p.add(1).read()) }
    }
}

impl Inner {
    const NONE: Inner =
        Inner { valid: 0, family: 0, protocol: 0, src_port: 0, dst_port: 0, src: [0; 16], dst: [0; 16] };
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
    // One load of the fixed header: a single bounds check the verifier can follow.
    let h: [u8; 20] = b.load(off).ok_or(MALFORMED)?;
    if h[0] >> 4 != 4 {
        return Err(MALFORMED);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 || !b.has(off, ihl) {
        return Err(MALFORMED);
    }
    if usize::from(u16::from_be_bytes([h[2], h[3]])) < ihl {
        return Err(MALFORMED);
    }
    let frag_field = u16::from_be_bytes([h[6], h[7]]);
    let frag = if frag_field & 0x1fff != 0 {
        FRAG_REST
    } else if frag_field & 0x2000 != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&h[12..16]);
    dst[..4].copy_from_slice(&h[16..20]);
    let mut meta = Meta {
        family: FAMILY_V4,
        protocol: h[9],
        port_key: 0,
        src_port: 0,
        tcp_flags: 0,
        frag,
        frag_id: u32::from(u16::from_be_bytes([h[4], h[5]])),
        src,
        dst,
        inner: Inner::NONE,
    };
    if frag != FRAG_REST {
        parse_l4(b, off + ihl, &mut meta)?;
    }
    Ok(meta)
}

#[inline(always)]
fn parse_ipv6(b: &Bounds, off: usize) -> Result<Meta, Reason> {
    let h: [u8; 40] = b.load(off).ok_or(MALFORMED)?;
    if h[0] >> 4 != 6 {
        return Err(MALFORMED);
    }
    let mut next = h[6];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    let mut l4 = off + 40;
    let mut walked = 0;
    let mut frag = FRAG_NONE;
    let mut frag_id = 0u32;
    while walked < MAX_IPV6_EXT_HEADERS {
        // Every extension header starts with {next header, length}; the fragment
        // header is 8 bytes with the offset in bytes 2-3.
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let e: [u8; 2] = b.load(l4).ok_or(MALFORMED)?;
                (usize::from(e[1]) + 1) * 8
            }
            NEXTHDR_FRAGMENT => {
                let f: [u8; 8] = b.load(l4).ok_or(MALFORMED)?;
                let field = u16::from_be_bytes([f[2], f[3]]);
                frag_id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                if field >> 3 != 0 {
                    // The rest of a fragmented packet: its protocol is the fragment
                    // header's next header; there is no transport header to read.
                    frag = FRAG_REST;
                    next = f[0];
                    break;
                }
                if field & 1 != 0 {
                    frag = FRAG_FIRST;
                }
                8
            }
            NEXTHDR_AUTH => {
                let e: [u8; 2] = b.load(l4).ok_or(MALFORMED)?;
                (usize::from(e[1]) + 2) * 4
            }
            _ => break,
        };
        if !b.has(l4, len) {
            return Err(MALFORMED);
        }
        let e: [u8; 1] = b.load(l4).ok_or(MALFORMED)?;
        next = e[0];
        l4 += len;
        walked += 1;
    }
    if frag != FRAG_REST
        && walked == MAX_IPV6_EXT_HEADERS
        && matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT | NEXTHDR_AUTH)
    {
        return Err(Reason::DropExtHeaders);
    }
    let mut meta = Meta {
        family: FAMILY_V6,
        protocol: next,
        port_key: 0,
        src_port: 0,
        tcp_flags: 0,
        frag,
        frag_id,
        src,
        dst,
        inner: Inner::NONE,
    };
    if frag != FRAG_REST {
        parse_l4(b, l4, &mut meta)?;
    }
    Ok(meta)
}

#[inline(always)]
fn parse_l4(b: &Bounds, l4: usize, meta: &mut Meta) -> Result<(), Reason> {
    // Whole-header loads at one offset: LLVM cannot re-derive the pointer in a way the
    // verifier loses track of.
    match meta.protocol {
        IPPROTO_TCP => {
            let h: [u8; 20] = b.load(l4).ok_or(MALFORMED)?;
            let hlen = usize::from(h[12] >> 4) * 4;
            if hlen < 20 || !b.has(l4, hlen) {
                return Err(MALFORMED);
            }
            meta.src_port = u16::from_be_bytes([h[0], h[1]]);
            meta.port_key = u16::from_be_bytes([h[2], h[3]]);
            meta.tcp_flags = h[13];
        }
        IPPROTO_UDP => {
            let h: [u8; 8] = b.load(l4).ok_or(MALFORMED)?;
            meta.src_port = u16::from_be_bytes([h[0], h[1]]);
            meta.port_key = u16::from_be_bytes([h[2], h[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let h: [u8; 8] = b.load(l4).ok_or(MALFORMED)?;
            // Neighbour discovery (RS, NS, NA): the instance needs it to exist on the
            // network. Router advertisements and redirects are judged by direction
            // (RA guard, in verdict.rs).
            if meta.protocol == IPPROTO_ICMPV6 && meta.family == FAMILY_V6 && matches!(h[0], 133 | 135 | 136)
            {
                return Err(Reason::AllowInfra);
            }
            meta.port_key = u16::from_be_bytes([h[0], h[1]]);
            meta.src_port = u16::from_be_bytes([h[4], h[5]]);
            if is_icmp_error(meta.protocol, h[0]) {
                meta.inner.valid = parse_quoted(b, l4 + 8, &mut meta.inner);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads the header an ICMP error quotes: IPv4 (with options) or a bare IPv6 header,
/// then 8 bytes of transport header. Returns `inner.valid`: 0 when unreadable.
/// A BPF subprogram, not inlined: its header copies then take stack space in a frame
/// of their own, not in the packet pipeline's (which is close to the 512-byte limit).
#[inline(never)]
fn parse_quoted(b: &Bounds, off: usize, inner: &mut Inner) -> u8 {
    let Some(first) = b.load::<u8>(off) else { return 0 };
    let l4 = match first >> 4 {
        4 => {
            let Some(h) = b.load::<[u8; 20]>(off) else { return 0 };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 || !b.has(off, ihl) {
                return 0;
            }
            inner.family = FAMILY_V4;
            inner.protocol = h[9];
            inner.src[..4].copy_from_slice(&h[12..16]);
            inner.dst[..4].copy_from_slice(&h[16..20]);
            off + ihl
        }
        6 => {
            let Some(h) = b.load::<[u8; 40]>(off) else { return 0 };
            inner.family = FAMILY_V6;
            inner.protocol = h[6];
            inner.src.copy_from_slice(&h[8..24]);
            inner.dst.copy_from_slice(&h[24..40]);
            off + 40
        }
        _ => return 0,
    };
    let Some(t) = b.load::<[u8; 8]>(l4) else { return 0 };
    match inner.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            inner.src_port = u16::from_be_bytes([t[0], t[1]]);
            inner.dst_port = u16::from_be_bytes([t[2], t[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            inner.src_port = u16::from_be_bytes([t[4], t[5]]);
            inner.dst_port = inner.src_port;
        }
        _ => {}
    }
    // The caller stores the result in `inner.valid`: a used return value keeps a
    // scalar in r0 at exit (the verifier refuses a stack pointer left there).
    1
}
