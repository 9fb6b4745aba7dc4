//! Handing messages to consumers over their sockets: `MSG` batches to DEALER consumers on the
//! ROUTER (parked when the consumer's pipe is full, never dropped), single frames to
//! simple-mode PUSH endpoints.

use std::time::Instant;

use depot_store::{Store, StoreError};

use crate::protocol;
use crate::queue::{Consumer, Queue};

/// Messages and bytes in one `MSG` batch.
const BATCH_MESSAGES: usize = 1_024;
const BATCH_BYTES: usize = 64 * 1024;
/// Messages handed to one consumer per loop turn.
const DELIVERY_BUDGET: usize = 8_192;

/// Sends a consumer its parked batch, then new batches while it has room. Ok(false) when the
/// consumer's peer is gone.
#[allow(clippy::too_many_arguments)]
pub(crate) fn deliver_router(
    q: &mut Queue,
    store: &Store,
    router: &zmq::Socket,
    queue: &str,
    group: &str,
    index: usize,
    identity: &[u8],
    now: Instant,
) -> Result<bool, StoreError> {
    let send = |batch: &[u8]| {
        let frames: [&[u8]; 5] = [
            identity,
            protocol::cmd::MSG,
            queue.as_bytes(),
            group.as_bytes(),
            batch,
        ];
        router.send_multipart(frames, zmq::DONTWAIT)
    };
    let parked = consumer_at(q, group, index).and_then(|c| c.parked.take());
    if let Some(batch) = parked {
        match send(&batch) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => {
                park(q, group, index, batch);
                return Ok(true);
            }
            Err(_) => return Ok(false),
        }
    }
    let mut sent = 0;
    while sent < DELIVERY_BUDGET {
        let mut batch = Vec::with_capacity(BATCH_BYTES + 1024);
        let taken = q.take(
            store,
            group,
            index,
            BATCH_MESSAGES,
            BATCH_BYTES,
            now,
            &mut |seq, r, payload| {
                protocol::pack_delivery(&mut batch, seq, r, payload);
                true
            },
        )?;
        if taken == 0 {
            break;
        }
        sent += taken;
        match send(&batch) {
            Ok(()) => {}
            // The consumer's pipe is full: the batch waits for the next turn (a ROUTER would
            // drop it silently without ROUTER_MANDATORY).
            Err(zmq::Error::EAGAIN) => {
                park(q, group, index, batch);
                break;
            }
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

fn consumer_at<'q>(q: &'q mut Queue, group: &str, index: usize) -> Option<&'q mut Consumer> {
    q.groups.get_mut(group)?.consumers.get_mut(index)
}

fn park(q: &mut Queue, group: &str, index: usize, batch: Vec<u8>) {
    if let Some(c) = consumer_at(q, group, index) {
        c.parked = Some(batch);
        c.blocked = true;
    }
}

/// Simple mode: one single-frame message per send, acknowledged once libzmq takes it.
pub(crate) fn deliver_push(
    q: &mut Queue,
    store: &Store,
    group: &str,
    index: usize,
    push: &zmq::Socket,
    now: Instant,
) -> Result<bool, StoreError> {
    let mut refused = false;
    q.take(
        store,
        group,
        index,
        DELIVERY_BUDGET,
        usize::MAX,
        now,
        &mut |_, _, payload| {
            refused = push.send(payload, zmq::DONTWAIT).is_err();
            !refused
        },
    )?;
    if refused {
        if let Some(c) = consumer_at(q, group, index) {
            c.blocked = true;
        }
    }
    Ok(true)
}
