//! The one retry policy with a deadline: attempts paced by a doubling pause (up to a cap), and
//! no attempt started past the deadline. The REST client, the node's writes and reads (leader
//! forwarding) and a node's join request all retry through it.
//!
//! ```text
//! let mut retry = retry_until(deadline, first, max);
//! loop {
//!     match attempt().await { Ok(v) => return Ok(v), Err(e) if !retryable(&e) => return Err(e), Err(e) => last = e }
//!     let Some(pause) = retry.next_pause() else { return Err(last) };
//!     sleep(pause).await;   // or any wait that may end sooner (a new leader)
//! }
//! ```

use std::time::{Duration, Instant};

/// Paces the attempts of one operation until `deadline`; see [`retry_until`].
#[derive(Clone, Debug)]
pub struct Retry {
    deadline: Instant,
    pause: Duration,
    max: Duration,
}

/// A retry policy for attempts until `deadline`: the first pause is `first`, each next one twice
/// the last, at most `max`.
pub fn retry_until(deadline: Instant, first: Duration, max: Duration) -> Retry {
    Retry {
        deadline,
        pause: first,
        max,
    }
}

impl Retry {
    /// The pause before the next attempt, or `None` when the attempt would start after the
    /// deadline (give up now).
    pub fn next_pause(&mut self) -> Option<Duration> {
        self.next_pause_at(Instant::now())
    }

    /// [`Retry::next_pause`] at `now`.
    pub fn next_pause_at(&mut self, now: Instant) -> Option<Duration> {
        if now + self.pause > self.deadline {
            return None;
        }
        let pause = self.pause;
        self.pause = (pause * 2).min(self.max);
        Some(pause)
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_stop_at_the_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut retry = retry_until(t0 + ms(1000), ms(100), ms(300));
        assert_eq!(retry.next_pause_at(t0), Some(ms(100)));
        assert_eq!(retry.next_pause_at(t0 + ms(100)), Some(ms(200)));
        assert_eq!(retry.next_pause_at(t0 + ms(300)), Some(ms(300)));
        assert_eq!(retry.next_pause_at(t0 + ms(600)), Some(ms(300)));
        // 900 + 300 is past the deadline: no attempt starts after it.
        assert_eq!(retry.next_pause_at(t0 + ms(900)), None);
        let mut constant = retry_until(t0 + ms(1000), ms(500), ms(500));
        assert_eq!(constant.next_pause_at(t0 + ms(500)), Some(ms(500)));
        assert_eq!(constant.next_pause_at(t0 + ms(501)), None);
    }
}
