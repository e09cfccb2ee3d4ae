//! The one retry policy of the background loops (reading the code key, counting clicks, pushing to the
//! outbox, reading the outbox, resubscribing to invalidations): exponential backoff with a cap.
//!
//! Pure: `next` only computes the next delay; the caller sleeps. Deterministic, so tests assert exact
//! sequences. (Webhook *deliveries* follow the operator's retry schedule instead: `webhook::worker`.)

use std::time::Duration;

/// Delays `initial`, `initial × 2`, `initial × 4`, … capped at `max`; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Self { initial, max, next: initial }
    }

    /// The delay before the next try, advancing the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let cases: [(u64, u64, &[u64]); 3] =
            [(100, 2000, &[100, 200, 400, 800, 1600, 2000, 2000]), (50, 50, &[50, 50, 50]), (300, 100, &[100, 100])];
        for (initial, max, want) in cases {
            let mut b = Backoff::new(ms(initial), ms(max));
            let got: Vec<u64> = want.iter().map(|_| b.next_delay().as_millis() as u64).collect();
            assert_eq!(got, want, "{initial} {max}");
            b.reset();
            assert_eq!(b.next_delay(), ms(initial.min(max)));
        }
    }
}
