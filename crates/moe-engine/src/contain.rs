//! Containment of panics in third-party parsers. The `tokenizers` crate panics on some
//! malformed tokenizer.json files (a decoder of the wrong shape hits an `expect` inside its
//! deserializer; found by `fuzz/fuzz_targets/tokenizer_json.rs`) where it should return an
//! error. Calls into it run under [`contained`], which turns such a panic into an error message;
//! a thread-local flag lets the panic hook of [`install_quiet_hook`] (the CLI's, the fuzz
//! targets') stay silent about a contained panic and report every other one as before.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside becomes `Err(its message)`.
pub fn contained<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let outer = CONTAINED.replace(true);
    let out = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.set(outer);
    out.map_err(|p| format!("the parser panicked: {}", message(&*p)))
}

/// Whether this thread is inside [`contained`].
pub fn is_contained() -> bool {
    CONTAINED.get()
}

fn message(p: &(dyn Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "no message".into(),
    }
}

/// Replaces the panic hook with one that ignores contained panics and passes every other one to
/// the hook it replaces.
pub fn install_quiet_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_contained() {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error_and_the_flag_is_restored() {
        install_quiet_hook();
        let e = contained(|| -> u32 { panic!("bad decoder") }).unwrap_err();
        assert!(e.contains("bad decoder"), "{e}");
        assert!(!is_contained());
        assert_eq!(contained(|| 7).unwrap(), 7);
        // Nested: the inner call restores the outer flag.
        let nested = contained(|| {
            let _ = contained(|| panic!("inner"));
            is_contained()
        });
        assert_eq!(nested, Ok(true));
    }
}
