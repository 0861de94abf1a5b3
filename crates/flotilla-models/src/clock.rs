//! Telling time spent awake from time spent suspended.
//!
//! Laptops sleep. A model request in flight when the lid closes fails on
//! wake-up (the connection is gone, or its timeout fired), and a session
//! budgeted for four hours should not be failed because it sat in a bag
//! overnight. The agent loop takes a [`SuspendAwareClock`] snapshot before
//! each attempt:
//!
//! - an attempt that failed while the machine slept
//!   ([`SuspendAwareClock::was_suspended`], i.e. more than
//!   [`SuspendAwareClock::SUSPEND_THRESHOLD`] of suspend since the snapshot)
//!   is retried at once and does not count against the retry budget, so
//!   waking up does not fire a burst of failures;
//! - the session's wall-time budget counts only
//!   [`SuspendAwareClock::active_since`], the time the machine was awake.
//!
//! On Linux the two clocks are `CLOCK_MONOTONIC` (stops during suspend) and
//! `CLOCK_BOOTTIME` (keeps counting); on macOS `CLOCK_UPTIME_RAW` and
//! `CLOCK_MONOTONIC`. Elsewhere both are the monotonic clock and no suspend
//! is ever seen.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A pair of clocks, one that stops while the machine is suspended and one
/// that does not. Implemented by the system clocks, and by fakes in tests.
pub trait ClockSource: Send + Sync {
    /// Time since an arbitrary start, not counting suspend.
    fn monotonic(&self) -> Duration;
    /// Time since the same kind of start, counting suspend.
    fn boottime(&self) -> Duration;
}

/// The system's clocks (see the module docs for which ones).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClocks;

#[cfg(any(target_os = "linux", target_os = "android"))]
const CLOCKS: (libc::clockid_t, libc::clockid_t) = (libc::CLOCK_MONOTONIC, libc::CLOCK_BOOTTIME);
#[cfg(any(target_os = "macos", target_os = "ios"))]
const CLOCKS: (libc::clockid_t, libc::clockid_t) = (libc::CLOCK_UPTIME_RAW, libc::CLOCK_MONOTONIC);
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios"
)))]
const CLOCKS: (libc::clockid_t, libc::clockid_t) = (libc::CLOCK_MONOTONIC, libc::CLOCK_MONOTONIC);

fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut spec = std::mem::MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: `spec` is valid for writes of one timespec; clock_gettime
    // writes it fully when it returns 0 and we read it only then.
    let rc = unsafe { libc::clock_gettime(clock, spec.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call above.
    let spec = unsafe { spec.assume_init() };
    Some(Duration::new(
        u64::try_from(spec.tv_sec).ok()?,
        u32::try_from(spec.tv_nsec).ok()?,
    ))
}

impl ClockSource for SystemClocks {
    fn monotonic(&self) -> Duration {
        read_clock(CLOCKS.0).unwrap_or_default()
    }

    fn boottime(&self) -> Duration {
        // Without a clock that counts suspend, report none.
        read_clock(CLOCKS.1).unwrap_or_else(|| self.monotonic())
    }
}

/// A snapshot of both clocks, to measure later how much time passed awake
/// and how much asleep. See the module docs for why.
#[derive(Clone)]
pub struct SuspendAwareClock {
    source: Option<Arc<dyn ClockSource>>,
    monotonic: Duration,
    boottime: Duration,
}

impl fmt::Debug for SuspendAwareClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuspendAwareClock")
            .field("monotonic", &self.monotonic)
            .field("boottime", &self.boottime)
            .field("system", &self.source.is_none())
            .finish()
    }
}

impl SuspendAwareClock {
    /// More suspend than this since a snapshot means the machine slept.
    pub const SUSPEND_THRESHOLD: Duration = Duration::from_secs(2);

    /// A snapshot of the system clocks.
    pub fn now() -> Self {
        SuspendAwareClock {
            source: None,
            monotonic: SystemClocks.monotonic(),
            boottime: SystemClocks.boottime(),
        }
    }

    /// A snapshot of `source` (a fake in tests).
    pub fn now_from(source: Arc<dyn ClockSource>) -> Self {
        SuspendAwareClock {
            monotonic: source.monotonic(),
            boottime: source.boottime(),
            source: Some(source),
        }
    }

    fn read(&self) -> (Duration, Duration) {
        match &self.source {
            Some(source) => (source.monotonic(), source.boottime()),
            None => (SystemClocks.monotonic(), SystemClocks.boottime()),
        }
    }

    /// Time spent awake since the snapshot.
    pub fn active_since(&self) -> Duration {
        let (monotonic, _) = self.read();
        monotonic.saturating_sub(self.monotonic)
    }

    /// Time spent suspended since the snapshot.
    pub fn suspended_since(&self) -> Duration {
        let (monotonic, boottime) = self.read();
        let total = boottime.saturating_sub(self.boottime);
        let active = monotonic.saturating_sub(self.monotonic);
        total.saturating_sub(active)
    }

    /// Time since the snapshot, awake or not.
    pub fn elapsed_since(&self) -> Duration {
        let (_, boottime) = self.read();
        boottime.saturating_sub(self.boottime)
    }

    /// Whether the machine slept (more than [`Self::SUSPEND_THRESHOLD`])
    /// since the snapshot.
    pub fn was_suspended(&self) -> bool {
        self.suspended_since() > Self::SUSPEND_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeClocks(Mutex<(Duration, Duration)>);

    impl FakeClocks {
        fn awake(&self, d: Duration) {
            let mut t = self.0.lock().unwrap();
            t.0 += d;
            t.1 += d;
        }
        fn asleep(&self, d: Duration) {
            self.0.lock().unwrap().1 += d;
        }
    }

    impl ClockSource for FakeClocks {
        fn monotonic(&self) -> Duration {
            self.0.lock().unwrap().0
        }
        fn boottime(&self) -> Duration {
            self.0.lock().unwrap().1
        }
    }

    #[test]
    fn separates_awake_and_suspended_time() {
        let fake = Arc::new(FakeClocks::default());
        fake.awake(Duration::from_secs(1000));
        fake.asleep(Duration::from_secs(50));
        let snapshot = SuspendAwareClock::now_from(fake.clone());
        assert_eq!(snapshot.active_since(), Duration::ZERO);
        assert_eq!(snapshot.suspended_since(), Duration::ZERO);

        fake.awake(Duration::from_secs(3));
        fake.asleep(Duration::from_secs(3600));
        fake.awake(Duration::from_millis(500));
        assert_eq!(snapshot.active_since(), Duration::from_millis(3500));
        assert_eq!(snapshot.suspended_since(), Duration::from_secs(3600));
        assert_eq!(snapshot.elapsed_since(), Duration::from_millis(3_603_500));
        assert!(snapshot.was_suspended());
    }

    #[test]
    fn short_suspend_is_below_threshold() {
        let fake = Arc::new(FakeClocks::default());
        let snapshot = SuspendAwareClock::now_from(fake.clone());
        fake.asleep(Duration::from_secs(2));
        assert!(!snapshot.was_suspended());
        fake.asleep(Duration::from_millis(1));
        assert!(snapshot.was_suspended());
    }

    #[test]
    fn clocks_going_backwards_saturate() {
        let fake = Arc::new(FakeClocks::default());
        fake.awake(Duration::from_secs(10));
        let snapshot = SuspendAwareClock::now_from(fake.clone());
        *fake.0.lock().unwrap() = (Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(snapshot.active_since(), Duration::ZERO);
        assert_eq!(snapshot.suspended_since(), Duration::ZERO);
    }

    #[test]
    fn system_clocks_advance_and_see_no_suspend_in_a_short_sleep() {
        let snapshot = SuspendAwareClock::now();
        assert!(SystemClocks.monotonic() > Duration::ZERO);
        std::thread::sleep(Duration::from_millis(30));
        let active = snapshot.active_since();
        assert!(active >= Duration::from_millis(30), "{active:?}");
        assert!(snapshot.suspended_since() < Duration::from_millis(100));
        assert!(!snapshot.was_suspended());
    }
}
