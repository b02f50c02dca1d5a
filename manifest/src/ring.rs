//! Consistent hashing of partitions onto nodes (serving nodes, compactor workers) with
//! virtual nodes.
//!
//! Each node owns `vnodes` points on a 64-bit ring (xxh3 of `node#i`); a partition goes to
//! the first point at or after its own position. Adding or removing one of N nodes moves
//! about 1/N of the partitions, and only to or from that node.

use xxhash_rust::xxh3::xxh3_64;

/// A ring over a set of nodes.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (point, index into `nodes`), sorted by point.
    points: Vec<(u64, usize)>,
    nodes: Vec<String>,
}

impl Ring {
    /// A ring of `nodes` with `vnodes` points each.
    pub fn new<I: IntoIterator<Item = String>>(nodes: I, vnodes: u32) -> Ring {
        let mut nodes: Vec<String> = nodes.into_iter().collect();
        nodes.sort();
        nodes.dedup();
        let mut points = Vec::with_capacity(nodes.len() * vnodes as usize);
        for (i, n) in nodes.iter().enumerate() {
            for v in 0..vnodes.max(1) {
                points.push((xxh3_64(format!("{n}#{v}").as_bytes()), i));
            }
        }
        // Ties (vanishingly rare) break by node name, so every node computes the same ring.
        points.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| nodes[a.1].cmp(&nodes[b.1])));
        Ring { points, nodes }
    }

    /// The node partition `p` belongs to, or `None` for an empty ring.
    pub fn owner(&self, p: u32) -> Option<&str> {
        if self.points.is_empty() {
            return None;
        }
        let pos = xxh3_64(format!("partition-{p}").as_bytes());
        let i = self.points.partition_point(|(pt, _)| *pt < pos);
        let (_, n) = self.points[i % self.points.len()];
        Some(&self.nodes[n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn assign(nodes: &[&str], partitions: u32) -> Vec<String> {
        let ring = Ring::new(nodes.iter().map(|s| s.to_string()), 256);
        (0..partitions)
            .map(|p| ring.owner(p).unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn spreads_partitions_and_moves_about_one_nth() {
        let before = assign(&["a", "b", "c"], 1024);
        let mut per: HashMap<&str, usize> = HashMap::new();
        for n in &before {
            *per.entry(n.as_str()).or_default() += 1;
        }
        for (n, c) in &per {
            assert!((240..=440).contains(c), "node {n} got {c} of 1024");
        }
        let after = assign(&["a", "b", "c", "d"], 1024);
        let moved: Vec<usize> = (0..1024).filter(|&i| before[i] != after[i]).collect();
        // Every move goes to the new node, and about a quarter of the partitions move.
        assert!(moved.iter().all(|&i| after[i] == "d"));
        assert!((150..=370).contains(&moved.len()), "moved {}", moved.len());
        assert!(Ring::new(Vec::<String>::new(), 256).owner(0).is_none());
    }
}
