//! Helpers shared by the fuzz loops of this crate's tests.

/// Runs `f`, turning a panic into Err(its message).
pub fn no_panic<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).map_err(|p| {
        p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
    })
}
