//! A value swapped whole while readers use it: a reader takes the value in force ([`Current::get`],
//! an `Arc` it keeps as long as it likes) and sees either the old value or the new one, never a
//! mix. What the stages and the edge re-read when a file changes (the tenant policy, keys,
//! certificates) is held this way.

use std::sync::{Arc, RwLock};

/// A value swapped whole when its source changes.
#[derive(Debug)]
pub struct Current<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Current<T> {
    pub fn new(value: T) -> Self {
        Self { value: RwLock::new(Arc::new(value)) }
    }

    /// The value in force now.
    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.value.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Puts `value` in force.
    pub fn set(&self, value: T) {
        *self.value.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(value);
    }
}
