//! Timers, pure: the stored record (versioned bincode), how an ADD becomes a record, and what
//! a firing does (late or not, the next deadline of a periodic timer, periods skipped).

use serde::{Deserialize, Serialize};

use crate::protocol::{AddTimer, Target, TimerInfo, When};

/// Format version byte in front of every stored timer.
const FORMAT_VERSION: u8 = 1;

/// Where a stored timer's firings go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredTarget {
    /// To the ROUTER envelope (identity, and the REQ delimiter if there was one) that added it.
    Reply(Vec<Vec<u8>>),
    /// On the clock PUB under this topic.
    Topic(String),
}

/// A timer as stored (one key-value entry per timer, key = id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRecord {
    /// Next deadline, ns since the epoch.
    pub due_ns: u64,
    /// Period in ns; 0 for a one-shot.
    pub every_ns: u64,
    /// Firings left; 0 = unlimited.
    pub remaining: u64,
    /// Firings so far.
    pub fired: u64,
    /// Where firings go.
    pub target: StoredTarget,
    /// Delivered with every firing.
    pub payload: Vec<u8>,
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 64 * 1024 }>()
}

/// Turns an ADD received at `now_ns` from `envelope` into a record, or says why not.
pub fn record_for(
    add: AddTimer,
    envelope: &[Vec<u8>],
    now_ns: u64,
    min_period_ns: u64,
) -> Result<TimerRecord, String> {
    let due_ns = match add.when {
        When::At(ns) => ns,
        When::In(after) => u64::try_from(after.as_nanos())
            .ok()
            .and_then(|after| now_ns.checked_add(after))
            .ok_or("in= is too far in the future")?,
    };
    let every_ns = match add.every {
        None => 0,
        Some(every) => {
            let every = u64::try_from(every.as_nanos()).map_err(|_| "every= is too long")?;
            if every < min_period_ns {
                return Err(format!(
                    "every={} is below the minimum period of {}",
                    crate::schedule::period_name(std::time::Duration::from_nanos(every)),
                    crate::schedule::period_name(std::time::Duration::from_nanos(min_period_ns))
                ));
            }
            every
        }
    };
    let remaining = match (add.count, every_ns) {
        (Some(count), _) => count,
        (None, 0) => 1,
        (None, _) => 0,
    };
    Ok(TimerRecord {
        due_ns,
        every_ns,
        remaining,
        fired: 0,
        target: match add.target {
            Target::Reply => StoredTarget::Reply(envelope.to_vec()),
            Target::Topic(topic) => StoredTarget::Topic(topic),
        },
        payload: add.payload,
    })
}

/// Timers are stored in batches: one key-value entry holds the timers added in one turn of
/// the server loop (up to the store's 8 KiB value limit), so that adding, firing and removing
/// many timers costs one write per batch, not one per timer. A timer's id is its batch number
/// shifted left by 16 bits plus its index in the batch.
pub type Batch = Vec<(u16, TimerRecord)>;

/// The id of timer `index` of batch `batch`.
pub fn timer_id(batch: u64, index: u16) -> u64 {
    (batch << 16) | u64::from(index)
}

/// The batch and index of timer `id`.
pub fn split_id(id: u64) -> (u64, u16) {
    (id >> 16, (id & 0xffff) as u16)
}

/// The stored bytes of a batch: version byte, then bincode.
pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Encoding into a Vec cannot fail for these types (the size limit is far above a batch).
    let _ = bincode::serde::encode_into_std_write(batch, &mut out, bincode_config());
    out
}

/// Parses a stored batch.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, String> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => bincode::serde::decode_from_slice(rest, bincode_config())
            .map(|(batch, _)| batch)
            .map_err(|e| format!("damaged timer batch: {e}")),
        Some((version, _)) => Err(format!("timer batch of unknown format version {version}")),
        None => Err("empty timer batch".into()),
    }
}

impl TimerRecord {
    /// Bytes this record takes in a stored batch (an upper bound).
    pub fn stored_size(&self) -> usize {
        let target = match &self.target {
            StoredTarget::Reply(envelope) => envelope.iter().map(|f| f.len() + 5).sum(),
            StoredTarget::Topic(topic) => topic.len(),
        };
        4 * 10 + 3 + 10 + target + self.payload.len() + 5
    }

    /// What LIST says about it.
    pub fn info(&self, id: u64) -> TimerInfo {
        TimerInfo {
            id,
            due_ns: self.due_ns,
            every_ns: self.every_ns,
            remaining: self.remaining,
            fired: self.fired,
            target: match &self.target {
                StoredTarget::Reply(_) => "reply".into(),
                StoredTarget::Topic(topic) => format!("topic:{topic}"),
            },
            payload_bytes: self.payload.len() as u64,
        }
    }

    /// Fires the timer at `now_ns`: returns what to send and updates the record to its next
    /// deadline (None when it is done). A firing is late when it comes `late_after_ns` or more
    /// after its deadline, or when the deadline passed before this process started. A periodic
    /// timer behind by several periods fires once and skips to its next deadline in the future
    /// (no burst after downtime); the skipped periods are reported.
    pub fn fire(&mut self, now_ns: u64, late_after_ns: u64, started_ns: u64) -> Fired {
        let scheduled_ns = self.due_ns;
        let late =
            now_ns.saturating_sub(scheduled_ns) >= late_after_ns || scheduled_ns < started_ns;
        self.fired += 1;
        let last = self.remaining == 1 || self.every_ns == 0;
        if self.remaining > 0 {
            self.remaining -= 1;
        }
        let mut skipped = 0;
        if !last {
            let behind = now_ns.saturating_sub(scheduled_ns) / self.every_ns;
            skipped = behind;
            self.due_ns = scheduled_ns.saturating_add((behind + 1).saturating_mul(self.every_ns));
        }
        Fired {
            scheduled_ns,
            late,
            done: last,
            skipped_periods: skipped,
        }
    }
}

/// The outcome of one firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// The deadline fired for.
    pub scheduled_ns: u64,
    /// Marked late.
    pub late: bool,
    /// No further firing: remove the timer.
    pub done: bool,
    /// Periods passed over (periodic timers after downtime).
    pub skipped_periods: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    fn add(when: When, every: Option<u64>, count: Option<u64>) -> AddTimer {
        AddTimer {
            when,
            every: every.map(Duration::from_nanos),
            count,
            target: Target::Topic("jobs".into()),
            payload: b"p".to_vec(),
        }
    }

    #[test]
    fn requests_become_records() {
        let envelope = vec![b"client".to_vec()];
        let r = record_for(
            add(When::In(Duration::from_secs(2)), None, None),
            &envelope,
            10 * S,
            1,
        )
        .unwrap();
        assert_eq!((r.due_ns, r.every_ns, r.remaining), (12 * S, 0, 1));
        let r = record_for(add(When::At(5), Some(S), None), &envelope, 10 * S, 1).unwrap();
        assert_eq!((r.due_ns, r.every_ns, r.remaining), (5, S, 0));
        let r = record_for(add(When::At(5), Some(S), Some(3)), &envelope, 0, 1).unwrap();
        assert_eq!(r.remaining, 3);
        let mut reply = add(When::At(5), None, None);
        reply.target = Target::Reply;
        let r = record_for(reply, &envelope, 0, 1).unwrap();
        assert_eq!(r.target, StoredTarget::Reply(envelope.clone()));
        let err =
            record_for(add(When::At(5), Some(50_000), None), &envelope, 0, 100_000).unwrap_err();
        assert!(err.contains("below the minimum period of 100us"), "{err}");
        assert!(record_for(add(When::In(Duration::MAX), None, None), &envelope, 1, 1).is_err());
    }

    #[test]
    fn stored_batches_round_trip_and_damage_is_reported() {
        let r = record_for(add(When::At(5), Some(S), Some(3)), &[], 0, 1).unwrap();
        let mut reply = add(
            When::At(u64::MAX),
            Some(Duration::MAX.as_nanos() as u64),
            Some(u64::MAX),
        );
        reply.target = Target::Reply;
        reply.payload = vec![7; 1000];
        reply.every = Some(Duration::from_nanos(u64::MAX));
        let big = record_for(reply, &[vec![1; 255], vec![]], 0, 1).unwrap();
        let batch: Batch = vec![(0, r.clone()), (7, big.clone())];
        let bytes = encode_batch(&batch);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_batch(&bytes).unwrap(), batch);
        assert!(
            bytes.len() <= r.stored_size() + big.stored_size() + 1,
            "stored_size is an upper bound: {} > {} + {}",
            bytes.len(),
            r.stored_size(),
            big.stored_size()
        );
        assert!(decode_batch(&bytes[..3]).is_err());
        assert!(decode_batch(&[9, 1, 2]).unwrap_err().contains("version 9"));
        assert!(decode_batch(&[]).is_err());
        assert!(
            encode_batch(&vec![(0, r)]).len() < 64,
            "small timers make small batches"
        );
        assert_eq!(split_id(timer_id(3, 9)), (3, 9));
        assert_eq!(timer_id(1, 0), 65_536);
    }

    #[test]
    fn one_shot_fires_once_and_marks_lateness() {
        let mut r = record_for(add(When::At(10 * S), None, None), &[], 0, 1).unwrap();
        let fired = r.fire(10 * S + 1_000, S / 10, 0);
        assert_eq!(
            fired,
            Fired {
                scheduled_ns: 10 * S,
                late: false,
                done: true,
                skipped_periods: 0
            }
        );
        let mut r = record_for(add(When::At(10 * S), None, None), &[], 0, 1).unwrap();
        assert!(r.fire(10 * S + S / 10, S / 10, 0).late, "at late_after");
        // Due before the process started (it was down): late however soon it fires.
        let mut r = record_for(add(When::At(10 * S), None, None), &[], 0, 1).unwrap();
        assert!(r.fire(10 * S + 5, S / 10, 10 * S + 1).late);
    }

    #[test]
    fn periodic_timers_follow_their_schedule_and_count() {
        let mut r = record_for(add(When::At(10 * S), Some(S), Some(3)), &[], 0, 1).unwrap();
        let mut deadlines = vec![];
        loop {
            let now = r.due_ns + 2_000_000; // each firing 2 ms late: no drift
            let fired = r.fire(now, S / 10, 0);
            deadlines.push(fired.scheduled_ns);
            assert!(!fired.late);
            if fired.done {
                break;
            }
        }
        assert_eq!(deadlines, [10 * S, 11 * S, 12 * S]);
        assert_eq!(r.fired, 3);
        // Unlimited: keeps going.
        let mut r = record_for(add(When::At(10 * S), Some(S), None), &[], 0, 1).unwrap();
        for _ in 0..100 {
            assert!(!r.fire(r.due_ns, S, 0).done);
        }
        assert_eq!(r.due_ns, 110 * S);
    }

    #[test]
    fn periodic_timer_after_downtime_fires_once_and_skips_missed_periods() {
        let mut r = record_for(add(When::At(10 * S), Some(S), None), &[], 0, 1).unwrap();
        let fired = r.fire(15 * S + 500, S / 10, 15 * S);
        assert!(fired.late && !fired.done);
        assert_eq!(fired.scheduled_ns, 10 * S);
        assert_eq!(fired.skipped_periods, 5);
        assert_eq!(r.due_ns, 16 * S);
    }
}
