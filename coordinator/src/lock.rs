//! The server's locks, each with its place in the one lock order.
//!
//! # The order: tree → sessions → watches → connections
//!
//! A thread holding one of these locks may take only locks further right.
//! The order follows the request path: a write holds the tree while it
//! checks its session, fires watches and queues notifications on
//! connections; a read holds the tree while it registers a watch. Nothing
//! on the right ever reaches back left, so no two threads can each hold
//! what the other waits for.
//!
//! The order is checked, not just written down: in debug builds (every
//! test) each thread keeps a bitmask of the levels it holds, and taking a
//! lock at or left of one already held panics with both names. That
//! includes taking the same lock twice, which for the tree's `RwLock` is a
//! real deadlock (a second read waits behind a queued writer, which waits
//! for the first read). Release builds compile the check away.
//!
//! The guards are parking_lot's, which are `!Send`: a guard cannot be held
//! across an `.await` (the future would not be `Send`), so a lock is always
//! released on the thread that took it and the per-thread record is exact.

use std::ops::{Deref, DerefMut};

/// A lock's place in the order; lower comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Tree = 0,
    Sessions = 1,
    Watches = 2,
    Connections = 3,
}

#[cfg(debug_assertions)]
mod held {
    use super::Level;
    use std::cell::Cell;

    thread_local! {
        static HELD: Cell<u8> = const { Cell::new(0) };
    }

    pub(super) fn acquire(level: Level) {
        HELD.with(|held| {
            let at_or_after = !((1u8 << level as u8) - 1);
            let conflict = held.get() & at_or_after;
            if conflict != 0 {
                let holding = [Level::Tree, Level::Sessions, Level::Watches, Level::Connections]
                    .into_iter()
                    .filter(|l| conflict & (1 << *l as u8) != 0)
                    .collect::<Vec<_>>();
                panic!("lock order violated: taking {level:?} while holding {holding:?} (order: tree → sessions → watches → connections)");
            }
            held.set(held.get() | 1 << level as u8);
        });
    }

    pub(super) fn release(level: Level) {
        HELD.with(|held| held.set(held.get() & !(1 << level as u8)));
    }
}

#[cfg(not(debug_assertions))]
mod held {
    use super::Level;
    #[inline(always)]
    pub(super) fn acquire(_: Level) {}
    #[inline(always)]
    pub(super) fn release(_: Level) {}
}

/// Records the level as held for as long as it lives. It is declared
/// after the inner guard in each guard struct, so it drops after it: the
/// record is cleared only once the lock is really released.
struct Held(Level);

impl Held {
    fn take(level: Level) -> Held {
        held::acquire(level);
        Held(level)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        held::release(self.0);
    }
}

/// A mutex at a fixed place in the lock order.
pub(crate) struct Mutex<T> {
    level: Level,
    inner: parking_lot::Mutex<T>,
}

pub(crate) struct MutexGuard<'a, T> {
    guard: parking_lot::MutexGuard<'a, T>,
    _held: Held,
}

impl<T> Mutex<T> {
    pub(crate) fn new(level: Level, value: T) -> Self {
        Mutex { level, inner: parking_lot::Mutex::new(value) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        let held = Held::take(self.level);
        MutexGuard { guard: self.inner.lock(), _held: held }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A reader-writer lock at a fixed place in the lock order.
pub(crate) struct RwLock<T> {
    level: Level,
    inner: parking_lot::RwLock<T>,
}

pub(crate) struct ReadGuard<'a, T> {
    guard: parking_lot::RwLockReadGuard<'a, T>,
    _held: Held,
}

pub(crate) struct WriteGuard<'a, T> {
    guard: parking_lot::RwLockWriteGuard<'a, T>,
    _held: Held,
}

impl<T> RwLock<T> {
    pub(crate) fn new(level: Level, value: T) -> Self {
        RwLock { level, inner: parking_lot::RwLock::new(value) }
    }

    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        let held = Held::take(self.level);
        ReadGuard { guard: self.inner.read(), _held: held }
    }

    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        let held = Held::take(self.level);
        WriteGuard { guard: self.inner.write(), _held: held }
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_in_order_are_fine_and_released_on_drop() {
        let tree = RwLock::new(Level::Tree, ());
        let watches = Mutex::new(Level::Watches, ());
        let conns = Mutex::new(Level::Connections, ());
        {
            let _t = tree.write();
            let _w = watches.lock();
            let _c = conns.lock();
        }
        // Everything was released: taking them again, or alone, is fine.
        let _w = watches.lock();
        drop(_w);
        let _t = tree.read();
    }

    #[test]
    #[should_panic(expected = "lock order violated: taking Tree while holding [Watches]")]
    fn taking_a_lock_left_of_one_held_panics() {
        let tree = RwLock::new(Level::Tree, ());
        let watches = Mutex::new(Level::Watches, ());
        let _w = watches.lock();
        let _t = tree.read();
    }

    #[test]
    #[should_panic(expected = "lock order violated: taking Tree while holding [Tree]")]
    fn taking_the_tree_twice_panics() {
        // Two reads on one thread deadlock once a writer queues between
        // them; the check refuses the pattern before it can.
        let tree = RwLock::new(Level::Tree, ());
        let _a = tree.read();
        let _b = tree.read();
    }
}
