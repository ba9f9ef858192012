//! The log's word on events the datapath could not report: lost to a full ring buffer, or held
//! back by the per-endpoint rate limit. The events themselves never go to the log; these
//! warnings do, at most one line per interval, with the counts since the last one. Pure.

use std::time::{Duration, Instant};

/// At most one warning per this long.
pub const INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct LossWarnings {
    interval: Duration,
    /// The cumulative counters last reported (or first seen).
    reported: Option<(u64, u64)>,
    last_warning: Option<Instant>,
}

impl LossWarnings {
    pub fn new(interval: Duration) -> LossWarnings {
        LossWarnings {
            interval,
            reported: None,
            last_warning: None,
        }
    }

    /// Given the datapath's cumulative counters (`events-lost`, `events-suppressed`) now: the
    /// warning to log, if there is news and the last warning is an interval old. The first
    /// reading is the baseline (counts of an agent before this one are not news).
    pub fn observe(&mut self, lost: u64, suppressed: u64, now: Instant) -> Option<String> {
        let Some((lost0, suppressed0)) = self.reported else {
            self.reported = Some((lost, suppressed));
            return None;
        };
        if lost < lost0 || suppressed < suppressed0 {
            // The maps were made anew: a new baseline.
            self.reported = Some((lost, suppressed));
            return None;
        }
        let (lost_new, suppressed_new) = (lost - lost0, suppressed - suppressed0);
        if lost_new == 0 && suppressed_new == 0
            || self
                .last_warning
                .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            return None;
        }
        let since = match self.last_warning {
            Some(t) => format!(" in the last {}s", now.duration_since(t).as_secs()),
            None => String::new(),
        };
        self.reported = Some((lost, suppressed));
        self.last_warning = Some(now);
        let mut parts = Vec::new();
        if lost_new > 0 {
            parts.push(format!(
                "{lost_new} lost (the ring buffer was full: the agent could not keep up)"
            ));
        }
        if suppressed_new > 0 {
            parts.push(format!(
                "{suppressed_new} held back by the per-endpoint limit (--event-rate, \
                 --event-burst, the enforcer.io/event-rate annotation)"
            ));
        }
        Some(format!(
            "datapath events not reported{since}: {}; the verdicts are still counted (`maps \
             dump counters`, /metrics); this warning repeats at most every {}s",
            parts.join(", "),
            self.interval.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_of_news_at_most_once_per_interval_with_the_counts_since() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut w = LossWarnings::new(Duration::from_secs(30));
        assert_eq!(
            w.observe(5, 100, s(0)),
            None,
            "the first reading is the baseline"
        );
        assert_eq!(w.observe(5, 100, s(1)), None, "nothing new");
        let first = w
            .observe(5, 150, s(2))
            .expect("the first news is told at once");
        assert!(first.contains("50 held back"), "{first}");
        assert!(!first.contains("lost"), "{first}");
        assert_eq!(w.observe(9, 400, s(10)), None, "within the interval: held");
        assert_eq!(w.observe(9, 500, s(20)), None);
        let next = w.observe(9, 500, s(32)).expect("an interval later");
        assert!(next.contains("in the last 30s"), "{next}");
        assert!(next.contains("4 lost"), "{next}");
        assert!(next.contains("350 held back"), "{next}");
        assert_eq!(w.observe(9, 500, s(100)), None, "nothing new");
        assert_eq!(
            w.observe(0, 0, s(200)),
            None,
            "counters reset: a new baseline"
        );
        assert!(w.observe(1, 0, s(201)).is_some());
    }
}
