//! The workload side (feature `attester`): produces evidence on the hardware the workload runs
//! on. Never verifies anything on the server's behalf and never holds server secrets.

pub mod snp;
pub mod tpm;
