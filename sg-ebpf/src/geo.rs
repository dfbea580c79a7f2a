//! Geo-blocking: ingress to the blocked ports from the listed countries' networks is
//! dropped whatever the rules say, unless the instance exempts the source. Reference
//! twin: `sg_common::reference::GeoModel`.
use aya_ebpf::maps::lpm_trie::Key;
use sg_common::abi::{
    CIDR_KEY_FIXED_BITS, CidrKey, GEO_EXEMPT_CLASS, GEO_KEY_FIXED_BITS, GEO_MAX_PORT_RANGES, GeoKey,
};

use crate::{
    maps::{CIDR_ALLOW, GEO_BLOCK, GEO_CONFIG},
    parse::Meta,
};

/// Whether an ingress packet (`meta.src` is the remote) is geo-blocked.
#[inline(always)]
pub fn blocked(policy_id: u32, meta: &Meta) -> bool {
    let (a, b) = meta.src_words();
    let selector = u64::from(meta.family) | u64::from(meta.protocol) << 8 | u64::from(meta.port_key) << 16;
    sg_geo_blocked(policy_id, selector, a, b) != 0
}

/// [`blocked`] as a global BPF function (integer arguments: family | protocol << 8 |
/// port key << 16, the source address's bytes 0-7 and 8-15): verified once, and its
/// keys live in its own stack frame instead of the packet pipeline's.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sg_geo_blocked(policy_id: u32, selector: u64, a: u64, b: u64) -> u64 {
    let (family, protocol, port_key) = (selector as u8, (selector >> 8) as u8, (selector >> 16) as u16);
    let Some(cfg) = GEO_CONFIG.get(0) else { return 0 };
    if cfg.set_id == 0 || protocol != cfg.protocol {
        return 0;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < GEO_MAX_PORT_RANGES {
        if i < usize::from(cfg.n_ranges) && cfg.ranges[i][0] <= port_key && port_key <= cfg.ranges[i][1] {
            in_range = true;
        }
        i += 1;
    }
    if !in_range {
        return 0;
    }
    let addr = Meta::addr_of_words(a, b);
    let key = Key::new(GEO_KEY_FIXED_BITS + 128, GeoKey { set_id: cfg.set_id, family, _pad: [0; 3], addr });
    if GEO_BLOCK.get(&key).is_none() {
        return 0;
    }
    let exempt = Key::new(CIDR_KEY_FIXED_BITS + 128, CidrKey { policy_id, class_id: GEO_EXEMPT_CLASS, addr });
    u64::from(CIDR_ALLOW.get(&exempt).is_none())
}
