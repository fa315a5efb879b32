//! Capped exponential backoff with jitter for reconnects.

use std::time::Duration;

use rand::Rng;

/// Delays that start at `initial`, double after each failure and never exceed
/// `max`; each delay is shortened by up to 20% at random so that many
/// coordinators do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        // The cap is a ceiling: the doubled delay is limited by `max`.
        self.next = self.next.saturating_mul(2).min(self.max);
        let jitter = rand::thread_rng().gen_range(0.8..=1.0);
        base.mul_f64(jitter).min(self.max)
    }

    /// After a success: start from `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays[0] >= Duration::from_millis(80));
        assert!(delays[3] >= Duration::from_millis(640), "{delays:?}");
        for d in &delays {
            assert!(*d <= Duration::from_secs(1), "a delay above the cap: {d:?}");
        }
        assert!(delays[19] >= Duration::from_millis(800), "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
