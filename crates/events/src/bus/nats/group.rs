//! Consumer groups on JetStream: which member of a group holds which partition.
//!
//! JetStream shares a durable consumer's messages among whoever pulls, in no order; the
//! platform promises that events of one key are handled in order, one at a time, so each
//! partition has one durable consumer and one member pulling it at a time. Who holds what is
//! one small document per group in a key-value bucket, changed only by compare-and-set (the
//! entry's revision): every member refreshes its own lease in it a few times per lease, drops
//! members whose lease ran out, gives back what is over its fair share and takes free
//! partitions up to it. A member that dies holds its partitions until its lease runs out; a
//! member that joins gets its share as the others give it back, within a third of a lease.
//!
//! Expiry times are the writers' wall clocks: hosts are expected to keep time (NTP), as any
//! lease across hosts does; a skew shortens or lengthens a dead member's lease by as much.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use crate::BusError;

/// The document: each live member's lease expiry (Unix ms), and each held partition's holder.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct Group {
    #[serde(default)]
    pub members: BTreeMap<String, u64>,
    #[serde(default)]
    pub held: BTreeMap<u32, String>,
}

impl Group {
    /// `me` refreshed until `now + lease`: members past their lease dropped with what they held,
    /// and `me` holding its fair share (giving back the highest partitions over it when
    /// `may_release`, taking the lowest free ones under it). The partitions `me` holds after.
    pub fn refresh(
        &mut self,
        me: &str,
        now: u64,
        lease: Duration,
        partitions: u32,
        may_release: bool,
    ) -> Vec<u32> {
        self.members.retain(|m, until| *until > now || m == me);
        self.members
            .insert(me.to_string(), now + lease.as_millis() as u64);
        let members = &self.members;
        self.held
            .retain(|p, holder| *p < partitions && members.contains_key(holder));
        let share = partitions.div_ceil(self.members.len() as u32);
        let mut mine: Vec<u32> = self.mine(me);
        if may_release {
            while mine.len() as u32 > share {
                let p = mine.pop().expect("over a share is not empty");
                self.held.remove(&p);
            }
        }
        for p in 0..partitions {
            if mine.len() as u32 >= share {
                break;
            }
            if let std::collections::btree_map::Entry::Vacant(free) = self.held.entry(p) {
                free.insert(me.to_string());
                mine.push(p);
            }
        }
        mine.sort_unstable();
        mine
    }

    /// `me` leaving: its lease and partitions given back at once.
    pub fn leave(&mut self, me: &str) {
        self.members.remove(me);
        self.held.retain(|_, holder| holder != me);
    }

    fn mine(&self, me: &str) -> Vec<u32> {
        self.held
            .iter()
            .filter(|(_, holder)| *holder == me)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// Applies `change` to the group document at `key` by compare-and-set; what `change`
/// returned for the version written.
pub(super) async fn change<T>(
    store: &kv::Store,
    key: &str,
    change: impl FnMut(&mut Group) -> T,
) -> Result<T, BusError> {
    compare_and_set(store, key, change).await
}

/// Applies `change` to the JSON document at `key` (its default when there is none, or it
/// does not read) by compare-and-set, reading again when another writer came first; what
/// `change` returned for the version written.
pub(super) async fn compare_and_set<D, T>(
    store: &kv::Store,
    key: &str,
    mut change: impl FnMut(&mut D) -> T,
) -> Result<T, BusError>
where
    D: Default + Serialize + serde::de::DeserializeOwned,
{
    for _ in 0..32 {
        let entry = store
            .entry(key)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot read {key}: {e}")))?;
        let (mut doc, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => (
                serde_json::from_slice::<D>(&e.value).unwrap_or_default(),
                Some(e.revision),
            ),
            Some(e) => (D::default(), Some(e.revision)),
            None => (D::default(), None),
        };
        let out = change(&mut doc);
        let value = serde_json::to_vec(&doc)
            .expect("a document serializes")
            .into();
        let written = match revision {
            Some(revision) => store
                .update(key, value, revision)
                .await
                .map(drop)
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            None => store.create(key, value).await.map(drop).map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
        };
        match written {
            Ok(()) => return Ok(out),
            // Another writer came first: read again, after a moment's jitter.
            Err((true, _)) => {
                let pause = rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err((false, e)) => {
                return Err(BusError::Unavailable(format!("cannot write {key}: {e}")));
            }
        }
    }
    Err(BusError::Unavailable(format!(
        "{key}: too many writers at once"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    #[test]
    fn members_share_the_partitions_and_a_dead_ones_come_back() {
        let mut g = Group::default();
        assert_eq!(g.refresh("a", 1000, LEASE, 4, true), vec![0, 1, 2, 3]);
        // b joins: nothing is free until a gives back what is over its share.
        assert_eq!(g.refresh("b", 1001, LEASE, 4, true), Vec::<u32>::new());
        assert_eq!(g.refresh("a", 1002, LEASE, 4, true), vec![0, 1]);
        assert_eq!(g.refresh("b", 1003, LEASE, 4, true), vec![2, 3]);
        // While a works on a batch it keeps what it has, even over its share.
        let mut h = Group::default();
        h.refresh("a", 1000, LEASE, 4, true);
        h.refresh("b", 1001, LEASE, 4, true);
        assert_eq!(h.refresh("a", 1002, LEASE, 4, false), vec![0, 1, 2, 3]);
        // a stops refreshing: past its lease, b takes everything.
        let later = 1002 + LEASE.as_millis() as u64 + 1;
        assert_eq!(g.refresh("b", later, LEASE, 4, true), vec![0, 1, 2, 3]);
        assert!(!g.members.contains_key("a"));
    }

    #[test]
    fn a_member_that_leaves_gives_back_at_once() {
        let mut g = Group::default();
        g.refresh("a", 1000, LEASE, 4, true);
        g.refresh("b", 1000, LEASE, 4, true);
        g.refresh("a", 1000, LEASE, 4, true);
        g.leave("a");
        assert_eq!(g.refresh("b", 1001, LEASE, 4, true), vec![0, 1, 2, 3]);
    }

    #[test]
    fn three_members_of_four_partitions_never_hold_one_twice() {
        let mut g = Group::default();
        for now in 0..20u64 {
            for m in ["a", "b", "c"] {
                g.refresh(m, 1000 + now, LEASE, 4, true);
            }
        }
        let held: Vec<u32> = g.held.keys().copied().collect();
        assert_eq!(held, vec![0, 1, 2, 3]);
        for m in ["a", "b", "c"] {
            let n = g.held.values().filter(|h| *h == m).count();
            assert!(n <= 2, "{m} holds {n}, over its share");
        }
    }
}
