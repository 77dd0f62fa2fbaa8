//! Inflater states a gzip layer's loads passed at chunk starts, so a later
//! load goes on from the nearest one instead of from its checkpoint. Both
//! the whole-blob path ([`super::layer`]) and the seek index keep one per
//! layer.

use std::collections::BTreeMap;

use super::gzip::{STATE_BYTES, State};

/// Inflater states one layer keeps, at most.
pub const MAX_MEMO: usize = 16;

/// Memory a full memo holds.
pub const MEMO_BYTES: u64 = MAX_MEMO as u64 * STATE_BYTES;

/// Inflater states by output offset, the least recently kept dropped first.
#[derive(Default)]
pub struct Memo {
    tick: u64,
    states: BTreeMap<u64, (u64, State)>,
}

impl Memo {
    /// A copy of the state nearest before `start`, if one is at `floor`
    /// or after.
    pub fn nearest(&self, start: u64, floor: u64) -> Option<State> {
        self.states
            .range(floor..=start)
            .next_back()
            .map(|(_, (_, st))| st.clone())
    }

    /// Keeps `st`; only a state whose output so far was checked belongs
    /// here.
    pub fn put(&mut self, st: State) {
        self.tick += 1;
        self.states.insert(st.out_pos, (self.tick, st));
        if self.states.len() > MAX_MEMO
            && let Some(oldest) = self
                .states
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| *k)
        {
            self.states.remove(&oldest);
        }
    }

    /// Forgets every state: output reached through one failed its check.
    pub fn clear(&mut self) {
        self.states.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(out: u64) -> State {
        let mut s = State::start();
        s.out_pos = out;
        s
    }

    #[test]
    fn the_nearest_state_at_or_after_the_floor_is_found_and_the_oldest_goes_first() {
        let mut m = Memo::default();
        for k in 0..=MAX_MEMO as u64 {
            m.put(at(k * 100));
        }
        assert!(m.nearest(50, 0).is_none(), "0 was the oldest and went");
        assert_eq!(m.nearest(250, 0).unwrap().out_pos, 200);
        assert!(m.nearest(250, 201).is_none());
        assert_eq!(m.nearest(300, 201).unwrap().out_pos, 300);
        m.clear();
        assert!(m.nearest(300, 0).is_none());
    }
}
