//! Load balancing: a [`Balance`] turns the current endpoint list into a [`Pick`]er, and the
//! client asks the picker for an endpoint per attempt.
//!
//! Pickers skip endpoints that outlier detection ejected, unless every endpoint is ejected
//! (then they pick among all rather than fail), and skip endpoints a call already tried,
//! unless no other is left.
//!
//! | balancer | picks |
//! |---|---|
//! | [`RoundRobin`] | each endpoint in turn |
//! | [`WeightedRandom`] | at random, in proportion to the instances' weights |
//! | [`P2c`] | the less loaded (fewer calls in flight) of two random endpoints |
//! | [`ConsistentHash`] | the endpoint owning the call's hash key on a ring, so one key sticks to one instance while the set is stable |

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::endpoint::Endpoint;

/// What a picker knows about one attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    /// The call's hash key ([`CallOptions::hash_key`](crate::CallOptions::hash_key)).
    pub key: Option<u64>,
    /// Endpoints (indices into the picker's list) this call already tried.
    pub tried: &'a [usize],
}

/// Chooses an endpoint for one attempt.
pub trait Pick: Send + Sync + 'static {
    /// An index into the endpoint list this picker was built from; `None` only when the list
    /// is empty.
    fn pick(&self, cx: &PickContext<'_>) -> Option<usize>;
}

/// Builds pickers; one per client, chosen at build time.
pub trait Balance: Send + Sync + 'static {
    /// A picker over `endpoints`, built again whenever discovery changes the list.
    fn picker(&self, endpoints: Arc<[Arc<Endpoint>]>) -> Box<dyn Pick>;
}

/// Indices of the endpoints worth picking: not tried and not ejected; failing that, not
/// tried; failing that, all.
fn candidates(endpoints: &[Arc<Endpoint>], tried: &[usize], out: &mut Vec<usize>) {
    out.clear();
    out.extend((0..endpoints.len()).filter(|i| !tried.contains(i) && endpoints[*i].is_available()));
    if out.is_empty() {
        out.extend((0..endpoints.len()).filter(|i| !tried.contains(i)));
    }
    if out.is_empty() {
        out.extend(0..endpoints.len());
    }
}

use crate::random::{self, below as random_below};

/// Whether every endpoint is a candidate, so the fast path can skip building the list.
fn all_fit(endpoints: &[Arc<Endpoint>], tried: &[usize]) -> bool {
    tried.is_empty() && endpoints.iter().all(|e| e.is_available())
}

/// Each endpoint in turn.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

struct RoundRobinPicker {
    endpoints: Arc<[Arc<Endpoint>]>,
    next: AtomicUsize,
}

impl Balance for RoundRobin {
    fn picker(&self, endpoints: Arc<[Arc<Endpoint>]>) -> Box<dyn Pick> {
        let start = random_below(endpoints.len().max(1));
        Box::new(RoundRobinPicker {
            endpoints,
            next: AtomicUsize::new(start),
        })
    }
}

impl Pick for RoundRobinPicker {
    fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        if all_fit(&self.endpoints, cx.tried) {
            return Some(turn % n);
        }
        let mut ok = Vec::with_capacity(n);
        candidates(&self.endpoints, cx.tried, &mut ok);
        Some(ok[turn % ok.len()])
    }
}

/// At random, in proportion to weight.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRandom;

struct WeightedPicker {
    endpoints: Arc<[Arc<Endpoint>]>,
}

impl Balance for WeightedRandom {
    fn picker(&self, endpoints: Arc<[Arc<Endpoint>]>) -> Box<dyn Pick> {
        Box::new(WeightedPicker { endpoints })
    }
}

impl Pick for WeightedPicker {
    fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let mut ok = Vec::with_capacity(self.endpoints.len());
        candidates(&self.endpoints, cx.tried, &mut ok);
        let weight = |i: usize| u64::from(self.endpoints[i].weight().max(1));
        let total: u64 = ok.iter().map(|&i| weight(i)).sum();
        let mut ticket = random::u64() % total;
        for &i in &ok {
            if ticket < weight(i) {
                return Some(i);
            }
            ticket -= weight(i);
        }
        ok.last().copied()
    }
}

/// The less loaded of two random endpoints ("power of two choices"), by calls in flight.
#[derive(Debug, Clone, Copy, Default)]
pub struct P2c;

struct P2cPicker {
    endpoints: Arc<[Arc<Endpoint>]>,
}

impl Balance for P2c {
    fn picker(&self, endpoints: Arc<[Arc<Endpoint>]>) -> Box<dyn Pick> {
        Box::new(P2cPicker { endpoints })
    }
}

impl P2cPicker {
    fn better(&self, a: usize, b: usize) -> usize {
        if self.endpoints[b].in_flight() < self.endpoints[a].in_flight() {
            b
        } else {
            a
        }
    }
}

impl Pick for P2cPicker {
    fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
        let n = self.endpoints.len();
        match n {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        if all_fit(&self.endpoints, cx.tried) {
            let a = random_below(n);
            let b = (a + 1 + random_below(n - 1)) % n;
            return Some(self.better(a, b));
        }
        let mut ok = Vec::with_capacity(n);
        candidates(&self.endpoints, cx.tried, &mut ok);
        if ok.len() == 1 {
            return Some(ok[0]);
        }
        let a = random_below(ok.len());
        let b = (a + 1 + random_below(ok.len() - 1)) % ok.len();
        Some(self.better(ok[a], ok[b]))
    }
}

/// A hash ring with virtual nodes: the call's key picks the first point clockwise. Calls
/// without a key are spread at random.
///
/// Points are placed by hashing each instance's id, so every client places them the same
/// way and a key reaches the same instance from any process; adding or removing an instance
/// moves only the keys of the arcs it gains or loses.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ConsistentHash {
    /// Points per instance at weight 100 (default 160); scaled by weight.
    pub points_per_instance: u32,
}

impl Default for ConsistentHash {
    fn default() -> ConsistentHash {
        ConsistentHash {
            points_per_instance: 160,
        }
    }
}

struct RingPicker {
    endpoints: Arc<[Arc<Endpoint>]>,
    /// (point, endpoint index), sorted by point.
    ring: Vec<(u64, usize)>,
}

impl ConsistentHash {
    /// A ring with `points` points per instance at weight 100.
    pub fn with_points(points: u32) -> ConsistentHash {
        ConsistentHash {
            points_per_instance: points.max(1),
        }
    }
}

impl Balance for ConsistentHash {
    fn picker(&self, endpoints: Arc<[Arc<Endpoint>]>) -> Box<dyn Pick> {
        let mut ring = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let weight = u64::from(endpoint.weight().max(1));
            let points = (u64::from(self.points_per_instance) * weight / 100).max(1);
            let id = &endpoint.instance().id;
            for point in 0..points {
                ring.push((hash_key(format!("{id}#{point}").as_bytes()), i));
            }
        }
        ring.sort_unstable();
        Box::new(RingPicker { endpoints, ring })
    }
}

impl Pick for RingPicker {
    fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let key = cx.key.unwrap_or_else(random::u64);
        let start = self.ring.partition_point(|(point, _)| *point < key);
        let walk = (0..self.ring.len()).map(|k| self.ring[(start + k) % self.ring.len()].1);
        // Clockwise: first untried available owner, else first untried, else the owner.
        let fits = |i: &usize| !cx.tried.contains(i);
        walk.clone()
            .find(|i| fits(i) && self.endpoints[*i].is_available())
            .or_else(|| walk.clone().find(fits))
            .or_else(|| walk.clone().next())
    }
}

/// The stable 64-bit hash used for ring points and call keys: FNV-1a, then a 64-bit
/// finaliser so that similar keys spread over the ring. The same in every process and
/// version, unlike `std`'s randomly seeded hasher.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Config;
    use crate::discovery::Instance;

    fn endpoints(n: usize) -> Arc<[Arc<Endpoint>]> {
        let config = Config::default();
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    Instance::new(format!("10.0.0.{i}:1")),
                    config.pool(),
                    config.ejection(),
                ))
            })
            .collect()
    }

    fn spread(balance: &dyn Balance, n: usize, picks: usize) -> Vec<usize> {
        let picker = balance.picker(endpoints(n));
        let mut counts = vec![0; n];
        for _ in 0..picks {
            counts[picker.pick(&PickContext::default()).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn every_balancer_spreads_over_all_endpoints() {
        let balancers: [&dyn Balance; 4] = [
            &RoundRobin,
            &WeightedRandom,
            &P2c,
            &ConsistentHash::default(),
        ];
        for balance in balancers {
            let counts = spread(balance, 3, 3000);
            assert!(counts.iter().all(|&c| c > 600), "{counts:?}");
        }
        assert_eq!(spread(&RoundRobin, 3, 3000), [1000, 1000, 1000]);
    }

    #[test]
    fn tried_endpoints_are_skipped_while_others_remain() {
        for balance in [
            &RoundRobin as &dyn Balance,
            &WeightedRandom,
            &P2c,
            &ConsistentHash::default(),
        ] {
            let picker = balance.picker(endpoints(3));
            for _ in 0..100 {
                let pick = picker
                    .pick(&PickContext {
                        key: Some(7),
                        tried: &[0, 2],
                    })
                    .unwrap();
                assert_eq!(pick, 1);
            }
            // With every endpoint tried, one is picked all the same.
            let again = picker.pick(&PickContext {
                key: Some(7),
                tried: &[0, 1, 2],
            });
            assert!(matches!(again, Some(0..=2)), "{again:?}");
        }
    }

    #[test]
    fn p2c_prefers_the_idle_endpoint() {
        let list = endpoints(2);
        let _busy: Vec<_> = (0..5).map(|_| list[0].start_call()).collect();
        let picker = P2c.picker(list.clone());
        for _ in 0..100 {
            assert_eq!(picker.pick(&PickContext::default()), Some(1));
        }
    }

    #[test]
    fn weights_shape_the_random_spread() {
        let config = Config::default();
        let list: Arc<[Arc<Endpoint>]> = [100, 300]
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Endpoint::new(
                    Instance::new(format!("10.0.0.{i}:1")).weight(*w),
                    config.pool(),
                    config.ejection(),
                ))
            })
            .collect();
        let picker = WeightedRandom.picker(list);
        let heavy = (0..4000)
            .filter(|_| picker.pick(&PickContext::default()) == Some(1))
            .count();
        assert!((2700..3300).contains(&heavy), "{heavy}");
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_only_the_removed_keys() {
        let full = endpoints(4);
        let picker = ConsistentHash::default().picker(full.clone());
        let owner = |picker: &dyn Pick, key: u64| {
            picker
                .pick(&PickContext {
                    key: Some(key),
                    tried: &[],
                })
                .unwrap()
        };
        let keys: Vec<u64> = (0..2000u64).map(|k| hash_key(&k.to_be_bytes())).collect();
        let before: Vec<String> = keys
            .iter()
            .map(|&k| full[owner(&*picker, k)].instance().id.clone())
            .collect();
        for (k, id) in keys.iter().zip(&before) {
            assert_eq!(
                &full[owner(&*picker, *k)].instance().id,
                id,
                "same key, same owner"
            );
        }
        // Remove instance 2: only its keys move.
        let rest: Arc<[Arc<Endpoint>]> = full
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, e)| e.clone())
            .collect();
        let removed = full[2].instance().id.clone();
        let picker = ConsistentHash::default().picker(rest.clone());
        let mut moved = 0;
        for (k, id) in keys.iter().zip(&before) {
            let now = &rest[owner(&*picker, *k)].instance().id;
            if *id == removed {
                moved += 1;
            } else {
                assert_eq!(now, id, "a key of a remaining instance moved");
            }
        }
        assert!(
            (300..700).contains(&moved),
            "about a quarter of the keys lived on the removed instance: {moved}"
        );
    }

    #[test]
    fn hash_key_is_stable_across_processes() {
        // Pinned: a change here would move every key on every ring in a fleet.
        assert_eq!(hash_key(b"user:42"), 0x998817bee6718248);
        assert_ne!(hash_key(b"user:42"), hash_key(b"user:43"));
    }
}
