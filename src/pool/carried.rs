//! What the layer above keeps with a server connection or a placement
//! (the session's settings and statement caches), opaque to the pool.
//!
//! The pool calls only downward, so it cannot name the session's types;
//! it carries them as `dyn Any` and drops them with their connection or
//! pool, which is all it ever does with them: resetting a connection,
//! and so what its cache says, is the session's job (its `recover.rs`).
//! A connection starts with nothing carried, so no state of one connection
//! can reach another. Access costs a type-id compare, no allocation or
//! hashing: the value is made once, at first use, and kept.

use std::any::Any;
use std::sync::OnceLock;

/// A value of one type the layer above keeps with one server connection;
/// dropped with it.
#[derive(Debug, Default)]
pub struct Carried(Option<Box<dyn Any + Send + Sync>>);

impl Carried {
    /// The carried `T`, made with `T::default()` on first use. A value
    /// of another type (a bug: one type per connection) is replaced, not
    /// reinterpreted.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|b| b.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        // Invariant: it holds a `T` (checked or just made).
        self.0
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .expect("carried value has the asked type")
    }
}

/// A value of one type the layer above keeps with one placement's pool,
/// shared by every connection of it; dropped with the pool.
#[derive(Debug, Default)]
pub struct SharedCarried(OnceLock<Box<dyn Any + Send + Sync>>);

impl SharedCarried {
    /// The shared `T`, made with `T::default()` on first use.
    ///
    /// # Panics
    /// If it was first asked as another type: one type per pool, a bug.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&self) -> &T {
        self.0
            .get_or_init(|| Box::new(T::default()))
            .downcast_ref::<T>()
            .expect("a placement carries one type")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_kept() {
        let mut c = Carried::default();
        *c.get_or_default::<u32>() += 5;
        *c.get_or_default::<u32>() += 1;
        assert_eq!(*c.get_or_default::<u32>(), 6);
        let s = SharedCarried::default();
        let a: *const Vec<u8> = s.get_or_default::<Vec<u8>>();
        let b: *const Vec<u8> = s.get_or_default::<Vec<u8>>();
        assert_eq!(a, b);
    }

    #[test]
    fn another_type_starts_afresh() {
        let mut c = Carried::default();
        *c.get_or_default::<u32>() = 7;
        assert_eq!(*c.get_or_default::<u64>(), 0);
    }
}
