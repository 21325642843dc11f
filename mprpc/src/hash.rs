//! A fast hasher for the maps on the call path: request ids (pending calls, calls in
//! flight) and service and method names (routing).
//!
//! The standard library's SipHash resists hash flooding and costs about as much per call
//! as the rest of routing. Neither map needs that resistance: names are looked up in maps
//! the server built itself, and the id maps are per connection and bounded by its
//! in-flight limit, so a peer choosing colliding ids can slow only its own connection.

use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a over bytes, with a multiplicative mix for integers; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fast(u64);

impl Default for Fast {
    fn default() -> Fast {
        Fast(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fast {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Sequential ids spread over the high bits that the table's control bytes use.
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(26);
    }
}

/// A `HashMap` keyed through [`Fast`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<Fast>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_and_names_spread() {
        let mut map: FastMap<u64, u64> = FastMap::default();
        for id in 1..=10_000 {
            map.insert(id, id * 2);
        }
        assert!((1..=10_000).all(|id| map.get(&id) == Some(&(id * 2))));
        let top_bits: std::collections::HashSet<u64> = (1..=256u64)
            .map(|id| {
                let mut h = Fast::default();
                h.write_u64(id);
                h.finish() >> 57
            })
            .collect();
        assert!(top_bits.len() > 64, "{} distinct", top_bits.len());
        let mut names: FastMap<&str, u8> = FastMap::default();
        names.insert("example.Echo", 1);
        names.insert("mprpc.health.Health", 2);
        assert_eq!(names.get("example.Echo"), Some(&1));
        assert_eq!(names.get("example.Echoo"), None);
    }
}
