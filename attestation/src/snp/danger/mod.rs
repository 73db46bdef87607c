//! Everything that weakens SNP verification, kept here so one search finds every use.
//!
//! [`DangerTestRoots`] makes the verifier trust roots that are not AMD's; with the `test-chain`
//! feature, [`test_chain`] builds such roots and signs synthetic reports with them. Neither may
//! ever be reachable from production configuration.

#[cfg(feature = "test-chain")]
mod der;
#[cfg(feature = "test-chain")]
pub mod test_chain;

use super::claims::{Product, Signer};

/// Roots trusted in addition to AMD's pinned ones, for synthetic test chains only.
#[derive(Clone, Debug, Default)]
pub struct DangerTestRoots {
    /// The roots.
    pub roots: Vec<DangerTestRoot>,
}

/// One test root: a self-signed ARK and the ASK (or ASVK) it issued.
#[derive(Clone, Debug)]
pub struct DangerTestRoot {
    /// The product whose reports it may sign (and whose TCB layout applies).
    pub product: Product,
    /// Whether the intermediate issues VCEKs (an ASK) or VLEKs (an ASVK).
    pub signer: Signer,
    /// The ARK certificate (DER).
    pub ark_der: Vec<u8>,
    /// The ASK or ASVK certificate (DER).
    pub ask_der: Vec<u8>,
}
