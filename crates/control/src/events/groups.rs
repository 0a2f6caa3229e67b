//! Consumer groups: who holds which partition, and where each partition is committed.
//!
//! Pure bookkeeping over an explicit clock, so every rule is unit-tested without sleeping.
//! Members are the consumers that fetched within one lease period. Each member may hold
//! `ceil(partitions / members)` partitions; it takes free ones when it has fewer, and gives
//! back its extras when it has more (only when it fetches, that is after it committed what it
//! was given, so no partition is ever processed by two members at once while both are alive).

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GroupError {
    #[error("partition {0} is held by another member of the group; fetch again")]
    NotHolder(u32),
    #[error("no such partition {0}")]
    NoPartition(u32),
    #[error("offset {offset} is past the end of partition {partition} ({end})")]
    PastEnd {
        partition: u32,
        offset: i64,
        end: i64,
    },
}

/// What a fetch may read.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub partition: u32,
    pub from: i64,
}

#[derive(Default)]
pub struct Groups {
    map: HashMap<(String, String), Group>,
}

struct Group {
    members: HashMap<String, Instant>,
    parts: Vec<Part>,
    /// Round-robin start among a member's partitions, so none starves.
    rotor: usize,
}

struct Part {
    committed: i64,
    holder: Option<(String, Instant)>,
}

impl Groups {
    pub fn is_loaded(&self, group: &str, topic: &str) -> bool {
        self.map
            .contains_key(&(group.to_string(), topic.to_string()))
    }

    /// Installs a group's committed offsets (one per partition), read from disk.
    pub fn load(&mut self, group: &str, topic: &str, committed: Vec<i64>) {
        self.map
            .entry((group.to_string(), topic.to_string()))
            .or_insert_with(|| Group {
                members: HashMap::new(),
                parts: committed
                    .into_iter()
                    .map(|c| Part {
                        committed: c,
                        holder: None,
                    })
                    .collect(),
                rotor: 0,
            });
    }

    /// A fetch by `consumer`: renews its membership and leases, rebalances, and returns the
    /// partitions it now holds with their committed offsets, in round-robin order.
    pub fn claim(
        &mut self,
        group: &str,
        topic: &str,
        consumer: &str,
        lease: Duration,
        now: Instant,
    ) -> Vec<Fetched> {
        let Some(g) = self.map.get_mut(&(group.to_string(), topic.to_string())) else {
            return Vec::new();
        };
        g.members.insert(consumer.to_string(), now);
        g.members
            .retain(|_, seen| now.duration_since(*seen) < lease);
        for p in &mut g.parts {
            if p.holder.as_ref().is_some_and(|(_, until)| *until <= now) {
                p.holder = None;
            }
        }
        let fair = g.parts.len().div_ceil(g.members.len().max(1));
        let mut held: Vec<usize> = (0..g.parts.len())
            .filter(|i| {
                g.parts[*i]
                    .holder
                    .as_ref()
                    .is_some_and(|(c, _)| c == consumer)
            })
            .collect();
        while held.len() > fair {
            let i = held.pop().expect("non-empty");
            g.parts[i].holder = None;
        }
        for i in 0..g.parts.len() {
            if held.len() >= fair {
                break;
            }
            if g.parts[i].holder.is_none() {
                held.push(i);
            }
        }
        held.sort_unstable();
        for &i in &held {
            g.parts[i].holder = Some((consumer.to_string(), now + lease));
        }
        g.rotor = g.rotor.wrapping_add(1);
        let n = held.len().max(1);
        (0..held.len())
            .map(|k| held[(k + g.rotor) % n])
            .map(|i| Fetched {
                partition: i as u32,
                from: g.parts[i].committed,
            })
            .collect()
    }

    /// Keeps `consumer`'s membership and the partitions it holds for another `lease`, without
    /// taking or giving back any: what a member does while a slow batch is still in its hands.
    /// The partitions it still holds (none, if its lease had already lapsed and another
    /// member took them).
    pub fn renew(
        &mut self,
        group: &str,
        topic: &str,
        consumer: &str,
        lease: Duration,
        now: Instant,
    ) -> Vec<u32> {
        let Some(g) = self.map.get_mut(&(group.to_string(), topic.to_string())) else {
            return Vec::new();
        };
        let mut held = Vec::new();
        for (i, p) in g.parts.iter_mut().enumerate() {
            if let Some((holder, until)) = &mut p.holder
                && holder == consumer
                && *until > now
            {
                *until = now + lease;
                held.push(i as u32);
            }
        }
        if !held.is_empty() {
            g.members.insert(consumer.to_string(), now);
        }
        held
    }

    /// Checks that `consumer` may commit `offset` on `partition`.
    pub fn check_commit(
        &self,
        group: &str,
        topic: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
        end: i64,
    ) -> Result<(), GroupError> {
        let g = self
            .map
            .get(&(group.to_string(), topic.to_string()))
            .ok_or(GroupError::NotHolder(partition))?;
        let p = g
            .parts
            .get(partition as usize)
            .ok_or(GroupError::NoPartition(partition))?;
        match &p.holder {
            Some((holder, _)) if holder == consumer => {}
            _ => return Err(GroupError::NotHolder(partition)),
        }
        if offset > end {
            return Err(GroupError::PastEnd {
                partition,
                offset,
                end,
            });
        }
        Ok(())
    }

    /// Records a commit that is on disk (never moves backwards).
    pub fn committed(&mut self, group: &str, topic: &str, partition: u32, offset: i64) {
        if let Some(p) = self
            .map
            .get_mut(&(group.to_string(), topic.to_string()))
            .and_then(|g| g.parts.get_mut(partition as usize))
        {
            p.committed = p.committed.max(offset);
        }
    }

    /// Per group of `topic`: committed offsets.
    pub fn committed_offsets(&self, topic: &str) -> Vec<(String, Vec<i64>)> {
        let mut out: Vec<(String, Vec<i64>)> = self
            .map
            .iter()
            .filter(|((_, t), _)| t == topic)
            .map(|((g, _), group)| (g.clone(), group.parts.iter().map(|p| p.committed).collect()))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    fn parts(f: &[Fetched]) -> Vec<u32> {
        let mut v: Vec<u32> = f.iter().map(|f| f.partition).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn one_member_holds_everything() {
        let mut g = Groups::default();
        g.load("g", "t", vec![0, 5, 0, 0]);
        let now = Instant::now();
        let got = g.claim("g", "t", "a", LEASE, now);
        assert_eq!(parts(&got), [0, 1, 2, 3]);
        assert_eq!(got.iter().find(|f| f.partition == 1).unwrap().from, 5);
    }

    #[test]
    fn members_share_and_a_dead_member_is_replaced() {
        let mut g = Groups::default();
        g.load("g", "t", vec![0; 4]);
        let t0 = Instant::now();
        assert_eq!(parts(&g.claim("g", "t", "a", LEASE, t0)), [0, 1, 2, 3]);
        // b joins: nothing free yet.
        assert!(g.claim("g", "t", "b", LEASE, t0).is_empty());
        // a fetches again: gives back its extras.
        assert_eq!(g.claim("g", "t", "a", LEASE, t0).len(), 2);
        let b = g.claim("g", "t", "b", LEASE, t0);
        assert_eq!(b.len(), 2);
        let a = g.claim("g", "t", "a", LEASE, t0);
        let mut all = parts(&a);
        all.extend(parts(&b));
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3], "disjoint and complete");
        // a dies: after its lease b takes everything.
        let later = t0 + LEASE + Duration::from_millis(1);
        assert_eq!(parts(&g.claim("g", "t", "b", LEASE, later)), [0, 1, 2, 3]);
    }

    #[test]
    fn only_the_holder_commits_and_never_past_the_end() {
        let mut g = Groups::default();
        g.load("g", "t", vec![0, 0]);
        let now = Instant::now();
        g.claim("g", "t", "a", LEASE, now);
        assert_eq!(
            g.check_commit("g", "t", "b", 0, 1, 10),
            Err(GroupError::NotHolder(0))
        );
        assert_eq!(
            g.check_commit("g", "t", "a", 0, 11, 10),
            Err(GroupError::PastEnd {
                partition: 0,
                offset: 11,
                end: 10
            })
        );
        assert_eq!(
            g.check_commit("g", "t", "a", 7, 1, 10),
            Err(GroupError::NoPartition(7))
        );
        assert!(g.check_commit("g", "t", "a", 0, 10, 10).is_ok());
        g.committed("g", "t", 0, 10);
        g.committed("g", "t", 0, 3);
        assert_eq!(
            g.claim("g", "t", "a", LEASE, now)
                .iter()
                .find(|f| f.partition == 0)
                .unwrap()
                .from,
            10
        );
    }

    #[test]
    fn a_member_at_work_keeps_its_partitions_by_renewing() {
        let mut g = Groups::default();
        g.load("g", "t", vec![0; 2]);
        let t0 = Instant::now();
        assert_eq!(parts(&g.claim("g", "t", "a", LEASE, t0)), [0, 1]);
        // a is busy past its lease, renewing as it goes; b keeps asking.
        let mut now = t0;
        for _ in 0..5 {
            now += LEASE / 2;
            assert_eq!(g.renew("g", "t", "a", LEASE, now), [0, 1]);
            assert!(
                g.claim("g", "t", "b", LEASE, now).is_empty(),
                "b takes nothing of a's"
            );
        }
        // a stops renewing: its lease lapses and b takes over; a renews nothing any more.
        now += LEASE + Duration::from_millis(1);
        assert_eq!(parts(&g.claim("g", "t", "b", LEASE, now)), [0, 1]);
        assert!(g.renew("g", "t", "a", LEASE, now).is_empty());
    }

    #[test]
    fn groups_are_independent() {
        let mut g = Groups::default();
        g.load("g1", "t", vec![0]);
        g.load("g2", "t", vec![0]);
        let now = Instant::now();
        assert_eq!(g.claim("g1", "t", "a", LEASE, now).len(), 1);
        assert_eq!(g.claim("g2", "t", "b", LEASE, now).len(), 1);
    }
}
