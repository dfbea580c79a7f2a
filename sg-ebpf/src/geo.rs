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
    let Some(cfg) = GEO_CONFIG.get(0) else { return false };
    if cfg.set_id == 0 || meta.protocol != cfg.protocol {
        return false;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < GEO_MAX_PORT_RANGES {
        if i < usize::from(cfg.n_ranges)
            && cfg.ranges[i][0] <= meta.port_key
            && meta.port_key <= cfg.ranges[i][1]
        {
            in_range = true;
        }
        i += 1;
    }
    if !in_range {
        return false;
    }
    let key = Key::new(
        GEO_KEY_FIXED_BITS + 128,
        GeoKey { set_id: cfg.set_id, family: meta.family, _pad: [0; 3], addr: meta.src },
    );
    if GEO_BLOCK.get(&key).is_none() {
        return false;
    }
    let exempt = Key::new(
        CIDR_KEY_FIXED_BITS + 128,
        CidrKey { policy_id, class_id: GEO_EXEMPT_CLASS, addr: meta.src },
    );
    CIDR_ALLOW.get(&exempt).is_none()
}
