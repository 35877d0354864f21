//! Non-finite steps: a step whose loss or gradient holds a NaN or an infinity changes nothing
//! (no AdamW update, no selection-bias move, no re-placement; its data counts as consumed so a
//! resume stays exact), and after `TrainConfig::max_skipped_steps` such steps in a row the run
//! stops with `Error::NonFinite`, its last checkpoint intact. `Fault` injects one for tests.

use crate::error::{Error, Result};

/// A fault to inject into the next training step (tests of the guard).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The batch's loss comes out NaN (as a corrupt batch or an overflow would make it).
    NanLoss,
    /// One gradient element becomes +inf after the backward pass.
    InfGradient,
}

/// Decides whether a step updates the weights; `in_a_row` is saved with the training state.
/// Returns Ok(true) to skip the update, or the error that ends the run.
pub fn check(step: u64, loss: f64, grad_norm: f64, in_a_row: &mut u64, limit: u64) -> Result<bool> {
    if loss.is_finite() && grad_norm.is_finite() {
        *in_a_row = 0;
        return Ok(false);
    }
    *in_a_row += 1;
    if *in_a_row > limit {
        return Err(Error::NonFinite { step, in_a_row: *in_a_row, loss, grad_norm });
    }
    Ok(true)
}

/// The default of `TrainConfig::max_skipped_steps` (also for runs saved before it existed).
pub fn default_limit() -> u64 {
    5
}
