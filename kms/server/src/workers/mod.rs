//! Background tasks of a kmsd process: the root rotation worker, audit checkpoints,
//! housekeeping of expired attestation state, and the metrics endpoint.

pub mod checkpoint;
pub(crate) mod housekeeping;
pub mod rotation;
pub mod scrape;
