//! Exponential restart back-off, reset after a stable run. The first restart
//! after a stable run is immediate (a one-off crash costs no extra kernel-path
//! time); repeated failures wait `min`, then twice as long each time, up to `max`.

use std::time::Duration;

pub struct Backoff {
    min: Duration,
    max: Duration,
    reset_after: Duration,
    next: Duration,
    fresh: bool,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, reset_after: Duration) -> Self {
        Backoff {
            min,
            max,
            reset_after,
            next: min,
            fresh: true,
        }
    }

    /// The delay before the next start, given how long the last run lasted.
    pub fn next(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.next = self.min;
            self.fresh = true;
        }
        if std::mem::take(&mut self.fresh) {
            return Duration::ZERO;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets_after_a_stable_run() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(10_000), Duration::from_secs(60));
        let quick = ms(10);
        let seq: Vec<u128> = (0..11).map(|_| b.next(quick).as_millis()).collect();
        assert_eq!(
            seq,
            vec![0, 50, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(
            b.next(Duration::from_secs(61)),
            ms(0),
            "stable run: immediate"
        );
        assert_eq!(b.next(quick), ms(50));
        assert_eq!(b.next(quick), ms(100));
    }
}
