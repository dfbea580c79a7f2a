//! A structural check of the search tree, run before `maxminddb` walks it.
//!
//! `Reader::within` in maxminddb 0.26 trusts the tree: a corrupt record that points back at an
//! ancestor node makes it descend forever (growing its stack until memory runs out), and a node
//! shared by several parents makes it report the same networks again and again. This check
//! visits every node once, in O(node count) time and node-count bits of memory, and rejects
//! such trees, so that the iteration afterwards is guaranteed to end.

use maxminddb::Metadata;

/// Size of the all-zero separator between the search tree and the data section.
const SEPARATOR: usize = 16;

/// Checks that the nodes reachable from the root form a tree: no node is reached twice and no
/// path is longer than the address. The one node that may be reached again is the root of the
/// IPv4 subtree (`::/96`) of an IPv6 tree, from outside `::/96`: those are the alias records
/// (`::ffff:0:0/96`, `2002::/16`, ...), which `within` skips the same way.
pub(crate) fn check(bytes: &[u8], metadata: &Metadata) -> Result<(), String> {
    let node_count = metadata.node_count as usize;
    let record_size = metadata.record_size;
    if !matches!(record_size, 24 | 28 | 32) {
        return Err(format!("unknown record size {record_size}"));
    }
    let bits = match metadata.ip_version {
        4 => 32,
        6 => 128,
        version => return Err(format!("unknown ip_version {version}")),
    };
    let tree_size = node_count * usize::from(record_size) / 4;
    if tree_size + SEPARATOR > bytes.len() {
        return Err(format!(
            "its search tree ({tree_size} bytes) is larger than the file ({} bytes)",
            bytes.len()
        ));
    }
    let tree = Tree { bytes: &bytes[..tree_size], record_size };

    // The root of the IPv4 subtree: 96 left turns from the root, as maxminddb finds it.
    let mut ipv4_start = 0;
    if bits == 128 {
        for _ in 0..96 {
            if ipv4_start >= node_count {
                break;
            }
            ipv4_start = tree.record(ipv4_start, 0);
        }
    }

    let mut seen = vec![0u64; node_count.div_ceil(64)];
    // (node, depth, whether the first min(depth, 96) bits of the path are all zero)
    let mut stack = vec![(0usize, 0u32, true)];
    while let Some((node, depth, in_ipv4)) = stack.pop() {
        if node >= node_count {
            // A data record or "no data".
            continue;
        }
        if bits == 128 && node == ipv4_start && !in_ipv4 {
            // An alias of the IPv4 subtree.
            continue;
        }
        let (word, bit) = (node / 64, 1u64 << (node % 64));
        if seen[word] & bit != 0 {
            return Err(format!("its search tree is not a tree: node {node} is reached twice"));
        }
        seen[word] |= bit;
        if depth == bits {
            return Err(format!("its search tree is deeper than {bits} bits"));
        }
        stack.push((tree.record(node, 1), depth + 1, in_ipv4 && depth >= 96));
        stack.push((tree.record(node, 0), depth + 1, in_ipv4));
    }
    Ok(())
}

struct Tree<'a> {
    bytes: &'a [u8],
    record_size: u16,
}

impl Tree<'_> {
    /// The left (`side` 0) or right (1) record of `node`, which must be below the node count.
    fn record(&self, node: usize, side: usize) -> usize {
        let be = |bytes: &[u8]| bytes.iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        match self.record_size {
            24 => {
                let at = node * 6 + side * 3;
                be(&self.bytes[at..at + 3])
            }
            28 => {
                // Two 28-bit records in 7 bytes; the middle byte holds the high nibbles.
                let at = node * 7;
                let middle = self.bytes[at + 3];
                let high = if side == 0 { middle >> 4 } else { middle & 0x0f };
                usize::from(high) << 24 | be(&self.bytes[at + side * 4..at + side * 4 + 3])
            }
            _ => {
                let at = node * 8 + side * 4;
                be(&self.bytes[at..at + 4])
            }
        }
    }
}
