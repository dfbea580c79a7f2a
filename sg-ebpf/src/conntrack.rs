//! Connection tracking. The reference twin, with the semantics spelled out, is
//! `sg_common::conntrack`; both must decide every packet sequence alike.
use sg_common::abi::{
    CT_REPLIED, CT_TCP_CLOSED, CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN_RECV, CT_TCP_SYN_SENT,
    CT_UNREPLIED, CtEntry, CtKey, CtTimeouts, DIR_EGRESS, DIR_INGRESS, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Reason,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::{
    classify::classify_fields,
    clock::Clock,
    maps::{CT, CT_CONFIG, CT_NEW},
    parse::{Inner, Meta},
};

/// What tracking made of a packet before the rules are consulted.
pub enum Tracked {
    /// Decided by the tracker.
    Decided(Reason),
    /// The rules decide. `revoked`: a flow of this packet was just cut because its rule
    /// is gone.
    Rules { revoked: bool },
}

/// Idle timeout of a flow in `state`, in ns. Read from `CT_CONFIG` each time (an
/// inlined array lookup) rather than copied once: stack space is scarce.
#[inline(always)]
fn timeout_ns(protocol: u8, state: u8) -> u64 {
    let secs = match CT_CONFIG.get(0) {
        Some(t) if t.tcp_established != 0 => t.for_state(protocol, state),
        _ => CtTimeouts::DEFAULT.for_state(protocol, state),
    };
    u64::from(secs) * 1_000_000_000
}

#[inline(always)]
fn alive(e: &CtEntry, protocol: u8, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) <= timeout_ns(protocol, e.state)
}

#[inline(always)]
fn is_echo_request(protocol: u8, icmp_type: u8) -> bool {
    (protocol == IPPROTO_ICMP && icmp_type == ICMP_ECHO_REQUEST)
        || (protocol == IPPROTO_ICMPV6 && icmp_type == ICMPV6_ECHO_REQUEST)
}

#[inline(always)]
fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    is_echo_request(protocol, icmp_type)
        || (protocol == IPPROTO_ICMP && icmp_type == ICMP_ECHO_REPLY)
        || (protocol == IPPROTO_ICMPV6 && icmp_type == ICMPV6_ECHO_REPLY)
}

#[inline(always)]
fn is_confirmed(protocol: u8, state: u8) -> bool {
    match protocol {
        IPPROTO_TCP => state == CT_TCP_ESTABLISHED || state == CT_TCP_CLOSING || state == CT_TCP_CLOSED,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => false,
        _ => state == CT_REPLIED,
    }
}

/// Instance-side key of a packet travelling in `direction`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn key_of(
    ifindex: u32,
    direction: u8,
    family: u8,
    protocol: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: u16,
    dport: u16,
) -> CtKey {
    let egress = direction == DIR_EGRESS;
    CtKey {
        ifindex,
        family,
        protocol,
        port_inst: if egress { sport } else { dport },
        port_remote: if egress { dport } else { sport },
        _pad: 0,
        addr_inst: if egress { *src } else { *dst },
        addr_remote: if egress { *dst } else { *src },
    }
}

#[inline(always)]
fn flow_key(ifindex: u32, direction: u8, m: &Meta) -> Option<CtKey> {
    let (sport, dport) = match m.protocol {
        IPPROTO_TCP | IPPROTO_UDP => (m.src_port, m.port_key),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if !is_echo(m.protocol, (m.port_key >> 8) as u8) {
                return None;
            }
            (m.src_port, m.src_port)
        }
        _ => (0, 0),
    };
    Some(key_of(ifindex, direction, m.family, m.protocol, &m.src, &m.dst, sport, dport))
}

#[inline(always)]
fn related_key(ifindex: u32, direction: u8, i: &Inner) -> CtKey {
    // The quoted packet travelled the other way.
    let inner_dir = if direction == DIR_INGRESS { DIR_EGRESS } else { DIR_INGRESS };
    key_of(ifindex, inner_dir, i.family, i.protocol, &i.src, &i.dst, i.src_port, i.dst_port)
}

/// Whether the current policy still allows the packet that opened the flow.
#[inline(always)]
fn still_allowed(policy_id: u32, key: &CtKey, e: &CtEntry) -> bool {
    classify_fields(policy_id, e.origin, key.family, key.protocol, e.orig_port_key, &key.addr_remote)
        == Reason::AllowRule
}

/// The state machine on one packet of a live flow: the new state, or `None` when the
/// entry does not explain the packet.
#[inline(always)]
fn step(state: u8, is_origin: bool, m: &Meta) -> Option<u8> {
    match m.protocol {
        IPPROTO_TCP => {
            let f = m.tcp_flags;
            let syn = f & TCP_SYN != 0 && f & TCP_ACK == 0;
            let synack = f & TCP_SYN != 0 && f & TCP_ACK != 0;
            let rst = f & TCP_RST != 0;
            let fin = f & TCP_FIN != 0;
            if syn {
                return if is_origin && (state == CT_TCP_SYN_SENT || state == CT_TCP_SYN_RECV) {
                    Some(state)
                } else {
                    None
                };
            }
            match state {
                CT_TCP_SYN_SENT => {
                    if rst {
                        Some(CT_TCP_CLOSED)
                    } else if !is_origin && synack {
                        Some(CT_TCP_SYN_RECV)
                    } else {
                        None
                    }
                }
                CT_TCP_SYN_RECV => {
                    if rst {
                        Some(CT_TCP_CLOSED)
                    } else if is_origin && f & TCP_ACK != 0 && f & TCP_SYN == 0 {
                        Some(if fin { CT_TCP_CLOSING } else { CT_TCP_ESTABLISHED })
                    } else if !is_origin && synack {
                        Some(state)
                    } else {
                        None
                    }
                }
                CT_TCP_ESTABLISHED => Some(if rst {
                    CT_TCP_CLOSED
                } else if fin {
                    CT_TCP_CLOSING
                } else {
                    state
                }),
                CT_TCP_CLOSING => Some(if rst { CT_TCP_CLOSED } else { state }),
                _ => None,
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let request = is_echo_request(m.protocol, (m.port_key >> 8) as u8);
            if is_origin && request {
                Some(state)
            } else if !is_origin && !request {
                Some(CT_REPLIED)
            } else {
                None
            }
        }
        _ => Some(if is_origin { state } else { CT_REPLIED }),
    }
}

/// A TCP SYN without ACK (see `sg_common::conntrack::is_pure_syn`).
#[inline(always)]
pub fn is_pure_syn(m: &Meta) -> bool {
    m.protocol == IPPROTO_TCP && m.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A live entry for `key`: (pointer, in CT (confirmed) or CT_NEW).
#[inline(always)]
fn lookup(key: &CtKey, clock: &mut Clock) -> Option<(*mut CtEntry, bool)> {
    // Echo flows are never confirmed: only CT_NEW can hold them.
    let echo = key.protocol == IPPROTO_ICMP || key.protocol == IPPROTO_ICMPV6;
    if !echo && let Some(p) = CT.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this program run.
        if alive(unsafe { &*p }, key.protocol, clock.now()) {
            return Some((p, true));
        }
    }
    if let Some(p) = CT_NEW.get_ptr_mut(key) {
        // SAFETY: as above.
        if alive(unsafe { &*p }, key.protocol, clock.now()) {
            return Some((p, false));
        }
    }
    None
}

#[inline(always)]
fn remove(key: &CtKey, confirmed: bool) {
    let _ = if confirmed { CT.remove(key) } else { CT_NEW.remove(key) };
}

/// Tracking step before the rules.
#[inline(always)]
pub fn track(ifindex: u32, policy_id: u32, direction: u8, m: &Meta, clock: &mut Clock) -> Tracked {
    let mut revoked = false;

    if m.inner.valid != 0 {
        let key = related_key(ifindex, direction, &m.inner);
        if let Some((p, confirmed)) = lookup(&key, clock) {
            // SAFETY: map value pointer.
            let e = unsafe { &*p };
            if e.policy_id == policy_id || still_allowed(policy_id, &key, e) {
                return Tracked::Decided(Reason::AllowRelated);
            }
            remove(&key, confirmed);
            revoked = true;
        }
    }

    let key = flow_key(ifindex, direction, m);
    if let Some(key) = &key
        && let Some((p, confirmed)) = lookup(key, clock)
    {
        // SAFETY: map value pointer; plain-data writes.
        let e = unsafe { &mut *p };
        let mut valid = true;
        if e.policy_id != policy_id {
            if still_allowed(policy_id, key, e) {
                e.policy_id = policy_id;
            } else {
                remove(key, confirmed);
                revoked = true;
                valid = false;
            }
        }
        if valid && let Some(state) = step(e.state, e.origin == direction, m) {
            e.state = state;
            e.last_seen_ns = clock.now();
            let want_confirmed = is_confirmed(key.protocol, state);
            if want_confirmed != confirmed {
                let moved = *e;
                let _ =
                    if want_confirmed { CT.insert(key, &moved, 0) } else { CT_NEW.insert(key, &moved, 0) };
                remove(key, confirmed);
            }
            return Tracked::Decided(Reason::AllowTracked);
        }
    }
    Tracked::Rules { revoked }
}

/// After a rule allowed `m`: open a flow if the packet can open one. (The key is
/// computed again rather than carried from [`track`]: stack space is scarcer than
/// instructions.)
#[inline(always)]
pub fn open(ifindex: u32, policy_id: u32, direction: u8, m: &Meta, clock: &mut Clock) {
    let Some(key) = flow_key(ifindex, direction, m) else { return };
    let key = &key;
    let state = match m.protocol {
        IPPROTO_TCP => {
            if m.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
                return;
            }
            CT_TCP_SYN_SENT
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if !is_echo_request(m.protocol, (m.port_key >> 8) as u8) {
                return;
            }
            CT_UNREPLIED
        }
        _ => CT_UNREPLIED,
    };
    let now = clock.now();
    let entry = CtEntry {
        last_seen_ns: now,
        created_ns: now,
        policy_id,
        orig_port_key: m.port_key,
        origin: direction,
        state,
    };
    let _ = CT.remove(key);
    let _ = CT_NEW.insert(key, &entry, 0);
}
