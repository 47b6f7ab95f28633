//! Whether an instance uses the cache, and what it must do before it does again.

use std::sync::atomic::{AtomicU8, Ordering};

const IN_USE: u8 = 0;
/// Redis failed a call: probe until it answers.
const RECOVERING: u8 = 1;
/// A write's cache update was lost: bump the generation before trusting any entry.
const OWES_BUMP: u8 = 2;

#[derive(Default)]
pub struct Availability(AtomicU8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State(u8);

impl State {
    pub fn owes_bump(self) -> bool {
        self.0 == OWES_BUMP
    }
}

impl Availability {
    pub fn usable(&self) -> bool {
        self.0.load(Ordering::Acquire) == IN_USE
    }

    pub fn state(&self) -> State {
        State(self.0.load(Ordering::Acquire))
    }

    /// Records a failure; true when the instance was using the cache until now (the caller
    /// starts the recovery).
    pub fn fail(&self, owes_bump: bool) -> bool {
        let target = if owes_bump { OWES_BUMP } else { RECOVERING };
        let previous = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                Some(state.max(target))
            })
            .expect("the update always applies");
        previous == IN_USE
    }

    /// Back in use, unless a failure since `probed` asks for more (a bump).
    pub fn recovered(&self, probed: State) -> bool {
        self.0
            .compare_exchange(probed.0, IN_USE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_write_is_not_forgotten_by_a_probe_that_raced_it() {
        let availability = Availability::default();
        assert!(
            availability.fail(false),
            "the first failure starts a recovery"
        );
        let probed = availability.state();
        assert!(!availability.fail(true), "one recovery at a time");
        assert!(!availability.recovered(probed), "the probe did not bump");
        let probed = availability.state();
        assert!(probed.owes_bump());
        assert!(
            !availability.fail(false),
            "a read's failure does not cancel the bump"
        );
        assert!(availability.recovered(probed) && availability.usable());
    }
}
