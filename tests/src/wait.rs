//! Polling for a condition that other processes or the kernel make true, bounded in
//! time: a test that waits forever is as useless as one that does not wait.

use std::time::{Duration, Instant};

/// Waits up to `timeout` for `condition`, polling every 20 ms; panics with `what` if it
/// never holds.
pub fn wait_until(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    wait_until_explained(what, timeout, condition, String::new);
}

/// The same, adding the result of `explain` (the state that did not change) to the
/// panic message.
pub fn wait_until_explained(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    explain: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}\n{}", explain());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets its flag when dropped, also while a panic unwinds: threads that loop until a
/// flag is set stop however the code that sets it ends, so a scope that joins them ends
/// too, and a failure fails instead of hanging.
#[derive(Debug)]
pub struct SetOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
