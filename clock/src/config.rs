//! `[clock]` in depot.toml, with `[[clock.ticks]]` per tick stream.

use std::time::Duration;

use depot_common::config::{duration, size_usize};
use serde::{Deserialize, Deserializer};

/// How a stream waits for its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Sleep to the absolute deadline with minimal timer slack.
    #[default]
    Normal,
    /// Sleep until shortly before the deadline, then spin; SCHED_FIFO when permitted.
    High,
}

impl Precision {
    /// `normal` or `high`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Normal => "normal",
            Precision::High => "high",
        }
    }
}

/// `[[clock.ticks]]`: one tick stream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickConfig {
    /// Time between ticks, e.g. "1ms", "10ms", "1s", "1m".
    #[serde(deserialize_with = "duration")]
    pub period: Duration,
    /// `normal` or `high`.
    #[serde(default)]
    pub precision: Precision,
}

/// Endpoints, tick streams and limits of the clock. An empty `publisher` switches it off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// PUB of ticks and of timers with a topic target (tcp).
    pub publisher: String,
    /// Further endpoints the same PUB binds, e.g. `["ipc:///run/depot/clock"]`.
    pub publisher_extra: Vec<String>,
    /// ROUTER of timer requests; empty switches timers off.
    pub timers: String,
    /// The tick streams.
    #[serde(deserialize_with = "ticks")]
    pub ticks: Vec<TickConfig>,
    /// Shortest tick period and timer period accepted.
    #[serde(deserialize_with = "duration")]
    pub min_period: Duration,
    /// Ticks missed by up to this long are sent late; older ones are skipped and counted.
    #[serde(deserialize_with = "duration")]
    pub catch_up: Duration,
    /// Raise the ticker thread and the tick publisher's I/O thread to SCHED_FIFO when permitted.
    pub realtime: bool,
    /// While tick streams run, keep idle CPUs polling rather than halting (a 0 µs request on
    /// `/dev/cpu_dma_latency`, as tuned's latency-performance profile does): faster wake-ups
    /// for every thread on a tick's path, at the cost of idle CPUs burning power.
    pub idle_poll: bool,
    /// Largest timer payload (a stored timer stays within the store's 8 KiB value limit).
    #[serde(deserialize_with = "size_usize")]
    pub max_payload: usize,
    /// Most timers pending at once; more are refused.
    pub max_timers: u64,
    /// A firing this much after its deadline is marked late.
    #[serde(deserialize_with = "duration")]
    pub late_after: Duration,
    /// After a start, timers that became due while the appliance was down fire this long after
    /// the start (marked late), so that subscribers and requesters have reconnected.
    #[serde(deserialize_with = "duration")]
    pub restart_grace: Duration,
    /// CURVE for the server sockets, set by `depot serve` from `[security]` (not a config key).
    #[serde(skip)]
    pub curve: Option<depot_common::security::ServerCurve>,
}

/// The timer limits a live reload may change: each is read per request or per firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerLimits {
    /// Largest timer payload accepted from now on (stored timers keep theirs).
    pub max_payload: usize,
    /// Most timers pending; lowering it below the count refuses new ones, keeps the rest.
    pub max_timers: u64,
    /// A firing this much after its deadline is marked late.
    pub late_after: Duration,
}

/// Largest `max_payload`: the stored timer (payload + ~300 bytes) must fit in 8 KiB.
pub const MAX_PAYLOAD_LIMIT: usize = 7 * 1024;

fn ticks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TickConfig>, D::Error> {
    let ticks = Vec::<TickConfig>::deserialize(d)?;
    for (i, tick) in ticks.iter().enumerate() {
        if ticks[..i].iter().any(|t| t.period == tick.period) {
            return Err(serde::de::Error::custom(format!(
                "two tick streams with period {:?}",
                tick.period
            )));
        }
        if tick.period > Duration::from_secs(86_400) {
            return Err(serde::de::Error::custom(format!(
                "tick period {:?} is longer than a day",
                tick.period
            )));
        }
    }
    Ok(ticks)
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            publisher: "tcp://127.0.0.1:5580".into(),
            publisher_extra: Vec::new(),
            timers: "tcp://127.0.0.1:5581".into(),
            ticks: vec![
                TickConfig {
                    period: Duration::from_secs(1),
                    precision: Precision::Normal,
                },
                TickConfig {
                    period: Duration::from_millis(10),
                    precision: Precision::Normal,
                },
            ],
            min_period: Duration::from_micros(100),
            catch_up: Duration::from_secs(1),
            realtime: true,
            idle_poll: true,
            max_payload: 4 * 1024,
            max_timers: 2_000_000,
            late_after: Duration::from_millis(100),
            restart_grace: Duration::from_secs(1),
            curve: None,
        }
    }
}

impl ClockConfig {
    /// The limits the timers thread takes live.
    pub fn timer_limits(&self) -> TimerLimits {
        TimerLimits {
            max_payload: self.max_payload,
            max_timers: self.max_timers,
            late_after: self.late_after,
        }
    }

    /// Checks what serde cannot: periods against `min_period`, the payload limit.
    pub fn validate(&self) -> Result<(), String> {
        for tick in &self.ticks {
            if tick.period < self.min_period {
                return Err(format!(
                    "[[clock.ticks]] period {} is below min_period {}",
                    crate::schedule::period_name(tick.period),
                    crate::schedule::period_name(self.min_period)
                ));
            }
        }
        if self.max_payload > MAX_PAYLOAD_LIMIT {
            return Err(format!(
                "[clock] max_payload {} exceeds {MAX_PAYLOAD_LIMIT} bytes",
                self.max_payload
            ));
        }
        if self.min_period.is_zero() {
            return Err("[clock] min_period must be above zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClockConfig, String> {
        let config: ClockConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn defaults_publish_one_second_and_ten_milliseconds() {
        let config = parse("").unwrap();
        let periods: Vec<_> = config.ticks.iter().map(|t| t.period).collect();
        assert_eq!(periods, [Duration::from_secs(1), Duration::from_millis(10)]);
        assert_eq!(config.min_period, Duration::from_micros(100));
        assert_eq!(config.publisher, "tcp://127.0.0.1:5580");
        assert_eq!(config.timers, "tcp://127.0.0.1:5581");
    }

    #[test]
    fn reads_streams_and_refuses_bad_ones() {
        let config = parse(
            "[[ticks]]\nperiod = \"1ms\"\nprecision = \"high\"\n[[ticks]]\nperiod = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(config.ticks[0].precision, Precision::High);
        assert_eq!(config.ticks[1].period, Duration::from_secs(60));
        assert_eq!(config.ticks[1].precision, Precision::Normal);
        let err = parse("[[ticks]]\nperiod = \"50us\"\n").unwrap_err();
        assert!(err.contains("below min_period 100us"), "{err}");
        let err = parse("[[ticks]]\nperiod = \"often\"\n").unwrap_err();
        assert!(err.contains("invalid duration"), "{err}");
        let err = parse("[[ticks]]\nperiod = \"1ms\"\nprecision = \"extreme\"\n").unwrap_err();
        assert!(err.contains("extreme"), "{err}");
        let err = parse("[[ticks]]\nperiod = \"1ms\"\n[[ticks]]\nperiod = \"1ms\"\n").unwrap_err();
        assert!(err.contains("two tick streams"), "{err}");
        let err = parse("[[ticks]]\nperiod = \"1ms\"\nphase = 3\n").unwrap_err();
        assert!(err.contains("phase"), "{err}");
        let err = parse("max_payload = \"64KiB\"\n").unwrap_err();
        assert!(err.contains("max_payload"), "{err}");
        let config = parse("min_period = \"10us\"\n[[ticks]]\nperiod = \"50us\"\n").unwrap();
        assert_eq!(config.ticks[0].period, Duration::from_micros(50));
    }
}
