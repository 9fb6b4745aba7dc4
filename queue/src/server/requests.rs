//! Requests to the ROUTER and pushes to the PULL: publishing (with the swap limit's
//! policies), subscribing, acks, and the refusals of bad input.

use std::time::Instant;

use depot_store::StoreError;

use super::{Peer, PendingConfirm, Server, Waiting, STATS_EVERY, WAITING_LIMIT};
use crate::config::FullPolicy;
use crate::metrics::{add, inc};
use crate::protocol::{self, Request};
use crate::queue::Consumer;
use depot_common::authz::{user_id, Op};

impl Server {
    pub(super) fn handle_request(&mut self, mut frames: Vec<zmq::Message>) {
        // The sender's key name (CURVE only), read before the frames are borrowed.
        let user = match frames.last_mut() {
            Some(last) if self.guard.active() => user_id(last),
            _ => String::new(),
        };
        let Some((identity, _)) = frames.split_first() else {
            return;
        };
        let identity = identity.to_vec();
        if let Some(peer) = self.peers.get_mut(&identity) {
            peer.last_seen = Instant::now();
        }
        let views: Vec<&[u8]> = frames[1..].iter().map(|f| &f[..]).collect();
        let request = match protocol::parse_request(&views, self.config.max_message_size) {
            Ok(request) => request,
            Err((command, context, e)) => {
                self.refuse(&e);
                self.reply(
                    &identity,
                    protocol::err(command.unwrap_or("?"), &context, &e.to_string()),
                );
                return;
            }
        };
        let denied = match request {
            // Charged once here: a publish waiting for room is not charged again on retry.
            Request::Publish {
                tag,
                queue,
                first_message,
            } => {
                let messages = (views.len() - first_message) as u64;
                self.guard
                    .check_admit(&user, Op::QueueProduce(queue), messages)
                    .err()
                    .map(|reason| ("PUB", tag, reason))
            }
            Request::Subscribe { queue, .. } => self
                .guard
                .check(&user, Op::QueueConsume(queue))
                .err()
                .map(|reason| ("SUB", queue.as_bytes(), reason)),
            _ => None,
        };
        if let Some((command, context, reason)) = denied {
            self.reply(&identity, protocol::err(command, context, &reason));
            return;
        }
        match request {
            Request::Publish { .. } => {
                drop(views);
                let bytes = frames.iter().map(|f| f.len()).sum();
                self.publish(identity, frames, bytes, false);
            }
            Request::Subscribe {
                queue,
                group,
                prefetch,
            } => self.subscribe(&identity, queue, group, prefetch),
            Request::Credit {
                queue,
                group,
                prefetch,
            } => {
                if let Some(c) = self.consumer_mut(&identity, queue, group) {
                    c.prefetch = prefetch;
                } else {
                    self.not_subscribed(&identity, "CREDIT", queue);
                }
            }
            Request::Ack { queue, group, seqs } => {
                let id = self.consumer_of(&identity, queue, group);
                let bad = match (id, self.queues.get_mut(queue)) {
                    (Some(id), Some(q)) => q.ack(group, id, &seqs),
                    _ => seqs.len(),
                };
                if bad > 0 {
                    self.bad_ack(&identity, "ACK", queue, bad);
                }
            }
            Request::AckThrough { queue, group, seq } => {
                let id = self.consumer_of(&identity, queue, group);
                match (id, self.queues.get_mut(queue)) {
                    (Some(id), Some(q)) => {
                        q.ack_through(group, id, seq);
                    }
                    _ => self.bad_ack(&identity, "ACKTO", queue, 1),
                }
            }
            Request::Unsubscribe { queue, group } => {
                if let Some(id) = self.consumer_of(&identity, queue, group) {
                    self.remove_consumer(queue, group, id);
                    if let Some(peer) = self.peers.get_mut(&identity) {
                        peer.subs.retain(|(_, _, sub)| *sub != id);
                    }
                }
            }
            Request::Heartbeat => self.reply(&identity, [protocol::cmd::HB.to_vec()]),
            Request::Stats { queue } => {
                let stats: Vec<_> = self
                    .queues
                    .values_mut()
                    .filter(|q| queue.is_none_or(|name| name == q.name))
                    .map(|q| q.stats(STATS_EVERY))
                    .collect();
                let json = serde_json::to_vec(&stats).unwrap_or_default();
                self.reply(&identity, [protocol::cmd::STATS.to_vec(), json]);
            }
        }
    }

    fn not_subscribed(&mut self, identity: &[u8], command: &str, queue: &str) {
        inc(&self.metrics.malformed);
        self.reply(
            identity,
            protocol::err(
                command,
                queue.as_bytes(),
                "not subscribed to this queue and group",
            ),
        );
    }

    fn bad_ack(&mut self, identity: &[u8], command: &str, queue: &str, bad: usize) {
        add(&self.metrics.bad_acks, bad as u64);
        if let Some(suppressed) = self.bad_input.allow() {
            tracing::warn!(
                queue,
                bad,
                suppressed,
                "queue: acks of messages not in flight to their sender"
            );
        }
        let reason = format!(
            "{bad} acknowledged sequence(s) were not in flight to this consumer (unknown, \
             acknowledged already, redelivered elsewhere, or another consumer's)"
        );
        self.reply(identity, protocol::err(command, queue.as_bytes(), &reason));
    }

    fn consumer_of(&self, identity: &[u8], queue: &str, group: &str) -> Option<u64> {
        let peer = self.peers.get(identity)?;
        peer.subs
            .iter()
            .find(|(q, g, _)| q == queue && g == group)
            .map(|(_, _, id)| *id)
    }

    fn consumer_mut(&mut self, identity: &[u8], queue: &str, group: &str) -> Option<&mut Consumer> {
        let id = self.consumer_of(identity, queue, group)?;
        self.queues
            .get_mut(queue)?
            .groups
            .get_mut(group)?
            .consumers
            .iter_mut()
            .find(|c| c.id == id)
    }

    fn subscribe(&mut self, identity: &[u8], queue: &str, group: &str, prefetch: u32) {
        if let Some(c) = self.consumer_mut(identity, queue, group) {
            c.prefetch = prefetch;
            self.reply(identity, protocol::ready(queue, group));
            return;
        }
        let id = self.consumer_id();
        let kv = self.kv.clone();
        let Some(q) = self.queue_for(queue, false) else {
            inc(&self.metrics.unknown_queue);
            self.reply(
                identity,
                protocol::err(
                    "SUB",
                    queue.as_bytes(),
                    "unknown queue (auto_create is off)",
                ),
            );
            return;
        };
        if q.add_group(group) {
            tracing::info!(queue, group, "subscription created");
        }
        if let Some(g) = q.groups.get_mut(group) {
            g.consumers.push(Consumer {
                id,
                identity: identity.to_vec(),
                prefetch,
                unacked: Default::default(),
                auto_ack: false,
                parked: None,
                blocked: false,
            });
        }
        // Store a new subscription at once, so its position survives a restart.
        if let Err(e) = q.store_acks(&kv, false, false) {
            tracing::error!(queue, error = %e, "queue: cannot store a subscription");
        }
        self.peers
            .entry(identity.to_vec())
            .or_insert_with(|| Peer {
                last_seen: Instant::now(),
                subs: Vec::new(),
            })
            .subs
            .push((queue.to_owned(), group.to_owned(), id));
        self.reply(identity, protocol::ready(queue, group));
    }

    /// Stores a confirmed publish (`from_waiting`: retried after the queue was full).
    fn publish(
        &mut self,
        identity: Vec<u8>,
        frames: Vec<zmq::Message>,
        bytes: usize,
        from_waiting: bool,
    ) {
        let views: Vec<&[u8]> = frames[1..].iter().map(|f| &f[..]).collect();
        let Ok(Request::Publish {
            tag,
            queue,
            first_message,
        }) = protocol::parse_request(&views, usize::MAX)
        else {
            return;
        };
        let store = self.store.clone();
        let Some(q) = self.queue_for(queue, false) else {
            inc(&self.metrics.unknown_queue);
            let reason = format!("unknown queue {queue} (auto_create is off)");
            self.reply(&identity, protocol::err("PUB", tag, &reason));
            return;
        };
        if q.is_full() {
            q.refresh(&store);
        }
        if q.is_full() {
            let limit = q.settings.swap_limit;
            let block = q.settings.policy == FullPolicy::Block;
            if block && (from_waiting || self.waiting_bytes + bytes <= WAITING_LIMIT) {
                let tag = tag.to_vec();
                drop(views);
                self.waiting_bytes += bytes;
                let waiting = Waiting {
                    identity,
                    tag,
                    frames,
                    bytes,
                };
                if from_waiting {
                    self.waiting.push_front(waiting);
                } else {
                    self.waiting.push_back(waiting);
                }
                return;
            }
            inc(&self.metrics.rejected_full);
            let reason = if block {
                "queue is full (swap limit reached) and too many publishes are waiting; retry later"
                    .to_string()
            } else {
                format!(
                    "queue {queue} is full: its journal reached the swap limit of {limit} bytes"
                )
            };
            self.reply(&identity, protocol::err("PUB", tag, &reason));
            return;
        }
        let bodies = &views[first_message..];
        match q.append(&store, bodies) {
            Ok(appended) => {
                add(&self.metrics.published_confirmed, bodies.len() as u64);
                self.confirms.push_back(PendingConfirm {
                    ticket: appended.ticket,
                    identity,
                    tag: tag.to_vec(),
                    first: appended.first,
                    last: appended.last,
                });
            }
            Err(e) => {
                let tag = tag.to_vec();
                self.store_failed(&e);
                let reason = format!("not stored: {e}");
                self.reply(&identity, protocol::err("PUB", &tag, &reason));
            }
        }
    }

    fn store_failed(&mut self, e: &StoreError) {
        inc(&self.metrics.store_errors);
        if let Some(suppressed) = self.store_failure.allow() {
            tracing::error!(error = %e, suppressed, "queue: store refused messages");
        }
    }

    /// Retries publishes held back by the `block` policy, in order, while their queue has room.
    pub(super) fn retry_waiting(&mut self) {
        let mut turns = self.waiting.len();
        while turns > 0 {
            turns -= 1;
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            self.waiting_bytes -= w.bytes;
            let before = self.waiting.len();
            self.publish(w.identity, w.frames, w.bytes, true);
            if self.waiting.len() > before {
                // Still full: keep the order, try again later.
                break;
            }
        }
        if let Some(frames) = self.parked_push.take() {
            self.push(frames, true);
        }
    }

    /// Stores a push from the PULL.
    pub(super) fn handle_push(&mut self, frames: Vec<zmq::Message>) {
        self.push(frames, false);
    }

    /// `retried`: parked while its queue was full, already charged to its key's rate.
    fn push(&mut self, mut frames: Vec<zmq::Message>, retried: bool) {
        let user = match frames.last_mut() {
            Some(last) if self.guard.active() => user_id(last),
            _ => String::new(),
        };
        let views: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let queue = match protocol::parse_push(&views, self.config.max_message_size) {
            Ok(queue) => queue.to_owned(),
            Err(e) => {
                self.refuse(&e);
                return;
            }
        };
        // No reply path: dropped, counted by the guard (also over the key's rate).
        let messages = if retried { 0 } else { views.len() as u64 - 1 };
        if self
            .guard
            .check_admit(&user, Op::QueueProduce(&queue), messages)
            .is_err()
        {
            return;
        }
        let store = self.store.clone();
        let Some(q) = self.queue_for(&queue, false) else {
            inc(&self.metrics.unknown_queue);
            if let Some(suppressed) = self.bad_input.allow() {
                tracing::warn!(
                    queue,
                    suppressed,
                    "queue: push to an unknown queue refused (auto_create is off)"
                );
            }
            return;
        };
        if q.is_full() {
            q.refresh(&store);
        }
        if q.is_full() {
            if q.settings.policy == FullPolicy::Block {
                drop(views);
                self.parked_push = Some(frames);
                return;
            }
            let n = views.len() as u64 - 1;
            add(&self.metrics.rejected_full, n);
            if let Some(suppressed) = self.bad_input.allow() {
                tracing::warn!(
                    queue,
                    messages = n,
                    suppressed,
                    "queue: full (reject policy): pushed messages refused"
                );
            }
            return;
        }
        match q.append(&store, &views[1..]) {
            Ok(_) => add(&self.metrics.published_push, views.len() as u64 - 1),
            Err(e) => self.store_failed(&e),
        }
    }
}
