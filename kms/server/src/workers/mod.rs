//! Background tasks of a kmsd process: the root rotation worker, audit checkpoints, and
//! housekeeping of expired attestation state.

pub mod checkpoint;
pub(crate) mod housekeeping;
pub mod rotation;
