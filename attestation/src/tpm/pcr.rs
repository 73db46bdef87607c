//! SHA-256 PCR values supplied with a quote, and the PCR file `tpm2_quote -o` writes.
//!
//! The values themselves prove nothing: the verifier accepts them only when their digest, over
//! the quote's own selection, equals the signed pcrDigest.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::wire::alg;
use crate::{Check, Refusal};

/// SHA-256 bank PCR values by PCR index.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct PcrValues(BTreeMap<u8, [u8; 32]>);

// The `tpm2_quote -o` ("serialized") layout: C structs in host (little-endian) order.
const SELECTION_SLOTS: usize = 16; // TPM2_NUM_PCR_BANKS
const SELECTION_SLOT_SIZE: usize = 8; // u16 hash, u8 sizeofSelect, u8[4] pcrSelect, 1 pad
const SELECTION_SIZE: usize = 4 + SELECTION_SLOTS * SELECTION_SLOT_SIZE; // 132
const DIGESTS_PER_BLOCK: usize = 8;
const DIGEST_SLOT_SIZE: usize = 2 + 64; // TPM2B_DIGEST: u16 size, u8[sizeof(TPMU_HA)]
const BLOCK_SIZE: usize = 4 + DIGESTS_PER_BLOCK * DIGEST_SLOT_SIZE; // 532
const MAX_BLOCKS: usize = 32; // tpm2-tools' TPM2_MAX_PCRS bound on tpm2_pcrs.pcr_values
const PCR_SELECT_MAX: usize = 4;

fn malformed(detail: impl Into<String>) -> Refusal {
    Refusal::new(Check::Malformed, format!("tpm2_quote PCR file: {}", detail.into()))
}

fn le_u32(bytes: &[u8], at: usize) -> Result<u32, Refusal> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| malformed("truncated"))
}

impl PcrValues {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value of PCR `index`, returning the previous one.
    pub fn insert(&mut self, index: u8, value: [u8; 32]) -> Option<[u8; 32]> {
        self.0.insert(index, value)
    }

    /// The value of PCR `index`.
    pub fn get(&self, index: u8) -> Option<&[u8; 32]> {
        self.0.get(&index)
    }

    /// The values in ascending PCR order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8; 32])> + '_ {
        self.0.iter().map(|(&i, v)| (i, v))
    }

    /// How many PCRs have a value.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no PCR has a value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the PCR file that `tpm2_quote -o` writes by default (`-F serialized`): a
    /// TPML_PCR_SELECTION (u32 count + 16 × 8-byte TPMS_PCR_SELECTION), a u32 count of TPML_DIGEST
    /// blocks, then the blocks (u32 count + 8 × (u16 size + 64-byte buffer)), all little-endian.
    /// Only the SHA-256 bank is accepted; the values are matched to the selection in the order the
    /// TPM reports them (selections in order, PCRs ascending).
    pub fn from_tpm2_tools(bytes: &[u8]) -> Result<Self, Refusal> {
        let count = le_u32(bytes, 0)? as usize;
        if count > SELECTION_SLOTS {
            return Err(malformed(format!("{count} PCR selections")));
        }
        let mut selected = Vec::new();
        for slot in 0..count {
            let at = 4 + slot * SELECTION_SLOT_SIZE;
            let s = bytes
                .get(at..at + SELECTION_SLOT_SIZE)
                .ok_or_else(|| malformed("truncated"))?;
            let hash = u16::from_le_bytes([s[0], s[1]]);
            let size = usize::from(s[2]);
            if size > PCR_SELECT_MAX {
                return Err(malformed(format!("sizeofSelect {size}")));
            }
            let bitmap = &s[3..3 + size];
            if bitmap.iter().all(|&b| b == 0) {
                continue;
            }
            if hash != alg::SHA256 {
                return Err(malformed(format!(
                    "bank {hash:#06x} selected; only SHA-256 is supported"
                )));
            }
            for (byte, bits) in bitmap.iter().enumerate() {
                for bit in 0..8u8 {
                    if bits & (1 << bit) != 0 {
                        // byte < 4: the index is < 32.
                        selected.push(byte as u8 * 8 + bit);
                    }
                }
            }
        }
        let blocks = le_u32(bytes, SELECTION_SIZE)? as usize;
        if blocks > MAX_BLOCKS {
            return Err(malformed(format!("{blocks} digest blocks")));
        }
        let expected_len = SELECTION_SIZE + 4 + blocks * BLOCK_SIZE;
        if bytes.len() != expected_len {
            return Err(malformed(format!("{} bytes, expected {expected_len}", bytes.len())));
        }
        let mut digests = Vec::new();
        for block in 0..blocks {
            let at = SELECTION_SIZE + 4 + block * BLOCK_SIZE;
            let n = le_u32(bytes, at)? as usize;
            if n > DIGESTS_PER_BLOCK {
                return Err(malformed(format!("block {block} holds {n} digests")));
            }
            for d in 0..n {
                let slot = &bytes[at + 4 + d * DIGEST_SLOT_SIZE..at + 4 + (d + 1) * DIGEST_SLOT_SIZE];
                let size = usize::from(u16::from_le_bytes([slot[0], slot[1]]));
                let value: [u8; 32] = slot
                    .get(2..2 + size)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| malformed(format!("digest of {size} bytes in the SHA-256 bank")))?;
                digests.push(value);
            }
        }
        if digests.len() != selected.len() {
            return Err(malformed(format!(
                "{} PCRs selected but {} values",
                selected.len(),
                digests.len()
            )));
        }
        let mut values = Self::new();
        for (index, value) in selected.into_iter().zip(digests) {
            if values.insert(index, value).is_some() {
                return Err(malformed(format!("PCR {index} selected twice")));
            }
        }
        Ok(values)
    }

    /// Writes the values in the `tpm2_quote -o` layout (one SHA-256 selection), which
    /// [`PcrValues::from_tpm2_tools`] and `tpm2_checkquote -f` read.
    pub fn to_tpm2_tools(&self) -> Vec<u8> {
        let mut bitmap = [0u8; PCR_SELECT_MAX];
        for &index in self.0.keys().filter(|&&i| usize::from(i) < PCR_SELECT_MAX * 8) {
            bitmap[usize::from(index / 8)] |= 1 << (index % 8);
        }
        let size_of_select: u8 = if bitmap[3] != 0 { 4 } else { 3 };
        let mut out = Vec::with_capacity(SELECTION_SIZE + 4 + BLOCK_SIZE * self.0.len().div_ceil(8));
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&alg::SHA256.to_le_bytes());
        out.push(size_of_select);
        out.extend_from_slice(&bitmap);
        out.push(0);
        out.resize(SELECTION_SIZE, 0);
        let values: Vec<&[u8; 32]> = self
            .0
            .iter()
            .filter(|(&i, _)| usize::from(i) < PCR_SELECT_MAX * 8)
            .map(|(_, v)| v)
            .collect();
        let chunks: Vec<_> = values.chunks(DIGESTS_PER_BLOCK).collect();
        out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for chunk in chunks {
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            for slot in 0..DIGESTS_PER_BLOCK {
                let mut digest = [0u8; DIGEST_SLOT_SIZE];
                if let Some(v) = chunk.get(slot) {
                    digest[..2].copy_from_slice(&32u16.to_le_bytes());
                    digest[2..34].copy_from_slice(&v[..]);
                }
                out.extend_from_slice(&digest);
            }
        }
        out
    }
}

impl FromIterator<(u8, [u8; 32])> for PcrValues {
    fn from_iter<I: IntoIterator<Item = (u8, [u8; 32])>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// As a JSON object from PCR index (decimal string) to lower-case hex value.
impl Serialize for PcrValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (index, value) in &self.0 {
            map.serialize_entry(&index.to_string(), &hex::encode(value))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_tpm2_tools_layout() {
        let values: PcrValues = (0u8..12).map(|i| (i * 2, [i; 32])).collect();
        let file = values.to_tpm2_tools();
        assert_eq!(file.len(), 132 + 4 + 2 * 532);
        assert_eq!(PcrValues::from_tpm2_tools(&file).unwrap(), values);
    }

    #[test]
    fn refuses_short_long_and_mismatched_files() {
        let values: PcrValues = [(0u8, [1u8; 32]), (7, [2; 32])].into_iter().collect();
        let file = values.to_tpm2_tools();
        for len in 0..file.len() {
            assert!(PcrValues::from_tpm2_tools(&file[..len]).is_err(), "{len}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(PcrValues::from_tpm2_tools(&longer).is_err());
        let mut fewer = file.clone();
        fewer[136] = 1; // the block claims one digest for two selected PCRs
        assert!(PcrValues::from_tpm2_tools(&fewer).is_err());
        let mut sha1 = file;
        sha1[4] = 0x04;
        assert!(PcrValues::from_tpm2_tools(&sha1).is_err());
    }
}
