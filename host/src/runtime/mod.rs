//! What the host offers plugins beyond the imbed contract, one room per capability.
//! (The plugin loader itself still lives in `crate::plugin`.)

pub(crate) mod budget;
pub(crate) mod nn;
