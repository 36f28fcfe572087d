//! Asking the cache for a row's lines before the row is used.
//!
//! Over 100k entities an event's update misses the cache once per feature, and
//! those misses, one after the other, were most of its time (16M updates/s over
//! 1k entities against 4.4–5M over 100k, in process). The actor asks for the
//! rows of the next group of events in its batch while it applies a group
//! ([`crate::store::FeatureStore::prefetch`]), so the misses overlap.

/// Starts loading the cache lines that hold `value` (up to two: its first and
/// last byte), without waiting for them.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    let first = (value as *const T).cast::<i8>();
    line(first);
    let size = std::mem::size_of::<T>();
    if size > 1 {
        line(first.wrapping_add(size - 1));
    }
}

/// The workspace denies `unsafe` (its other use is `millrace_proto::wire`'s
/// reading of ASCII as text). A prefetch is only a
/// hint: it never faults, reads nothing into the program and changes no
/// value, and the pointer comes from a live reference. There is no stable safe
/// form (`core::hint::prefetch_read` is unstable).
#[allow(unsafe_code)]
#[inline(always)]
fn line(at: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: see above; `_mm_prefetch` does not dereference `at`.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
