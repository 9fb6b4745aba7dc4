//! Acks that a client's pipe refused (it is not reading them), kept per client in order and
//! bounded in total: beyond the bound the oldest are dropped, so a client that never reads
//! costs bounded memory, and a turn retries a bounded number of clients, so it costs bounded
//! CPU. Pure bookkeeping; the caller does the sending.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

/// What one send attempt gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Delivered to the client's pipe.
    Delivered,
    /// The pipe is full: the client is still not reading.
    Full,
    /// The client is gone: its acks are dropped (its batches are stored all the same).
    Gone,
}

/// Acks waiting for their client to read, keyed by client identity.
#[derive(Debug)]
pub struct UnreadAcks<T> {
    /// Each client's acks, oldest first, with their arrival order.
    clients: HashMap<Vec<u8>, VecDeque<(u64, T)>>,
    /// (arrival order of its oldest ack, identity) per client: the oldest overall comes first.
    fronts: BTreeSet<(u64, Vec<u8>)>,
    /// Where the last retry stopped, so the next one starts after it (fair to every client).
    cursor: Option<(u64, Vec<u8>)>,
    total: usize,
    max: usize,
    next_order: u64,
}

impl<T> UnreadAcks<T> {
    /// Keeps at most `max` acks (at least one).
    pub fn new(max: usize) -> Self {
        UnreadAcks {
            clients: HashMap::new(),
            fronts: BTreeSet::new(),
            cursor: None,
            total: 0,
            max: max.max(1),
            next_order: 0,
        }
    }

    /// Acks kept.
    pub fn len(&self) -> usize {
        self.total
    }

    /// True when none are kept.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// True when `identity` has acks waiting: a newer ack must queue behind them.
    pub fn holds(&self, identity: &[u8]) -> bool {
        self.clients.contains_key(identity)
    }

    /// Keeps `ack` for `identity` behind its others; returns the acks dropped (oldest first,
    /// any client's) to stay within the bound.
    pub fn push(&mut self, identity: Vec<u8>, ack: T) -> Vec<(Vec<u8>, T)> {
        let order = self.next_order;
        self.next_order += 1;
        let queue = self.clients.entry(identity.clone()).or_default();
        if queue.is_empty() {
            self.fronts.insert((order, identity));
        }
        queue.push_back((order, ack));
        self.total += 1;
        let mut dropped = Vec::new();
        while self.total > self.max {
            match self.drop_oldest() {
                Some(one) => dropped.push(one),
                None => break,
            }
        }
        dropped
    }

    fn drop_oldest(&mut self) -> Option<(Vec<u8>, T)> {
        let (_, identity) = self.fronts.pop_first()?;
        let queue = self.clients.get_mut(&identity)?;
        let (_, ack) = queue.pop_front()?;
        self.total -= 1;
        match queue.front() {
            Some((order, _)) => {
                self.fronts.insert((*order, identity.clone()));
            }
            None => {
                self.clients.remove(&identity);
            }
        }
        Some((identity, ack))
    }

    /// Tries at most `clients` clients, starting after where the last call stopped; for each,
    /// sends its acks in order until one does not go through or `sends` attempts are used.
    /// Returns the acks dropped because their client was gone.
    pub fn retry(
        &mut self,
        clients: usize,
        mut sends: usize,
        mut send: impl FnMut(&[u8], &T) -> Sent,
    ) -> usize {
        let mut turn: Vec<(u64, Vec<u8>)> = match &self.cursor {
            Some(cursor) => self
                .fronts
                .range((Bound::Excluded(cursor.clone()), Bound::Unbounded))
                .take(clients)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if turn.len() < clients {
            let wrap = clients - turn.len();
            let first = turn.first().cloned();
            turn.extend(
                self.fronts
                    .iter()
                    .take(wrap)
                    .take_while(|key| Some(*key) != first.as_ref())
                    .cloned(),
            );
        }
        let mut gone = 0;
        for key in turn {
            if sends == 0 {
                break;
            }
            self.cursor = Some(key.clone());
            let (_, identity) = key;
            let Some(queue) = self.clients.get_mut(&identity) else {
                continue;
            };
            let before = queue.front().map(|(order, _)| *order);
            while let Some((_, ack)) = queue.front() {
                if sends == 0 {
                    break;
                }
                sends -= 1;
                match send(&identity, ack) {
                    Sent::Delivered => {}
                    Sent::Full => break,
                    Sent::Gone => gone += 1,
                }
                queue.pop_front();
                self.total -= 1;
            }
            let after = queue.front().map(|(order, _)| *order);
            if before != after {
                if let Some(order) = before {
                    self.fronts.remove(&(order, identity.clone()));
                }
                match after {
                    Some(order) => {
                        self.fronts.insert((order, identity));
                    }
                    None => {
                        self.clients.remove(&identity);
                    }
                }
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Vec<u8> {
        vec![n]
    }

    #[test]
    fn beyond_the_bound_the_oldest_of_any_client_are_dropped() {
        let mut acks = UnreadAcks::new(3);
        assert!(acks.push(id(1), "a1").is_empty());
        assert!(acks.push(id(2), "b1").is_empty());
        assert!(acks.push(id(1), "a2").is_empty());
        assert_eq!(acks.push(id(2), "b2"), vec![(id(1), "a1")]);
        assert_eq!(acks.push(id(2), "b3"), vec![(id(2), "b1")]);
        assert_eq!(acks.len(), 3);
        assert_eq!(acks.push(id(3), "c1"), vec![(id(1), "a2")]);
        assert!(!acks.holds(&id(1)));
        assert!(acks.holds(&id(2)) && acks.holds(&id(3)));
    }

    #[test]
    fn a_client_that_reads_again_gets_its_acks_in_order_and_a_full_one_is_tried_once() {
        let mut acks = UnreadAcks::new(100);
        for ack in ["a1", "a2", "a3"] {
            acks.push(id(1), ack);
        }
        acks.push(id(2), "b1");
        let mut tried = Vec::new();
        let gone = acks.retry(10, 100, |who, ack| {
            tried.push(*ack);
            if who == id(1).as_slice() {
                Sent::Delivered
            } else {
                Sent::Full
            }
        });
        assert_eq!(gone, 0);
        assert_eq!(tried, ["a1", "a2", "a3", "b1"]);
        assert_eq!(acks.len(), 1);
        assert!(!acks.holds(&id(1)));
        // A gone client's acks are all dropped in one go.
        acks.push(id(2), "b2");
        assert_eq!(acks.retry(10, 100, |_, _| Sent::Gone), 2);
        assert!(acks.is_empty());
    }

    #[test]
    fn a_turn_is_bounded_and_the_next_turn_goes_on_with_the_other_clients() {
        let mut acks = UnreadAcks::new(1_000);
        for client in 0..10 {
            for n in 0..10 {
                acks.push(id(client), n);
            }
        }
        let mut seen = Vec::new();
        for _ in 0..5 {
            acks.retry(2, 100, |who, _| {
                seen.push(who[0]);
                Sent::Full
            });
        }
        // Ten clients tried once each in five turns of two, each with one attempt.
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<u8>>());
        // The send budget stops a turn within a client.
        let mut sent = 0;
        acks.retry(10, 7, |_, _| {
            sent += 1;
            Sent::Delivered
        });
        assert_eq!(sent, 7);
        assert_eq!(acks.len(), 93);
    }
}
