//! Big-endian field reading over a byte slice. Running out of bytes is its own error, so a
//! streaming reader can tell "wait for more input" from "malformed".

/// The input ended inside a field: `needed` is how many bytes from the cursor's start that field
/// ends at, so a streaming reader knows the least it must have before parsing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Short {
    pub(crate) needed: usize,
}

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.pos.saturating_add(n);
        if end > self.bytes.len() {
            return Err(Short { needed: end });
        }
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A u16 length, then that many bytes.
    pub(crate) fn u16_prefixed(&mut self) -> Result<&'a [u8], Short> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Appends `bytes` with a u16 length prefix; `what` names the field in the error.
pub(crate) fn put_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8], what: &str) -> Result<(), crate::Error> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| crate::Error::InvalidArgument(format!("{what} is {} bytes; at most 65535", bytes.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}
