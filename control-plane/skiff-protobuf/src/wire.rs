//! A bounds-checked protobuf wire reader. Every read returns an error instead of panicking.

use crate::ProtobufError;

pub(crate) const WT_VARINT: u8 = 0;
pub(crate) const WT_FIXED64: u8 = 1;
pub(crate) const WT_LEN: u8 = 2;

/// Reads one message's bytes; `base` is the absolute offset of `buf[0]` in the request body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], base: usize, message: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            base,
            message,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Absolute offset of the next unread byte.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn truncated(&self, field: u32) -> ProtobufError {
        ProtobufError::Truncated {
            message: self.message,
            field,
            offset: self.offset(),
        }
    }

    pub(crate) fn varint(&mut self, field: u32) -> Result<u64, ProtobufError> {
        let start = self.offset();
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.truncated(field));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::InvalidVarint {
            message: self.message,
            field,
            offset: start,
        })
    }

    /// Reads a field key; returns `(field number, wire type, offset of the key)`.
    pub(crate) fn key(&mut self) -> Result<(u32, u8, usize), ProtobufError> {
        let offset = self.offset();
        let key = self.varint(0)?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(ProtobufError::InvalidFieldNumber {
                message: self.message,
                field: field.min(u64::from(u32::MAX)) as u32,
                offset,
            });
        }
        Ok((field as u32, (key & 7) as u8, offset))
    }

    fn take(&mut self, n: usize, field: u32) -> Result<&'a [u8], ProtobufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.truncated(field))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads a length-delimited payload; returns it and its absolute offset.
    pub(crate) fn len_delimited(&mut self, field: u32) -> Result<(&'a [u8], usize), ProtobufError> {
        let len = self.varint(field)?;
        let len = usize::try_from(len).map_err(|_| self.truncated(field))?;
        let offset = self.offset();
        Ok((self.take(len, field)?, offset))
    }

    pub(crate) fn fixed64(&mut self, field: u32) -> Result<u64, ProtobufError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}
