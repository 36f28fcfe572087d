//! Protobuf's wire format read in place. Services that read every record of
//! a stream (monitor, enrich, feature-state) keep the received buffer and
//! where the fields they need lie in it, instead of building the generated
//! structs (a `String` per text field, a hash-map entry per map entry). The
//! readers take the canonical encoding, what prost writes; whatever else they
//! meet goes through prost, so a record is accepted or refused exactly as
//! prost would.

use std::ops::Range;

use bytes::Bytes;

/// Where a field's bytes lie in a record's buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub fn of(at: Range<usize>) -> Option<Self> {
        Some(Self {
            start: u32::try_from(at.start).ok()?,
            end: u32::try_from(at.end).ok()?,
        })
    }

    pub fn bytes(self, buf: &[u8]) -> &[u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The text; empty if it were not UTF-8, which decoding rules out.
    pub fn text(self, buf: &[u8]) -> &str {
        as_text(self.bytes(buf))
    }

    /// A span over UTF-8 text, `None` otherwise (prost refuses such a record).
    pub fn text_of(buf: &[u8], at: Range<usize>) -> Option<Self> {
        is_text(buf.get(at.clone())?).then_some(())?;
        Self::of(at)
    }
}

/// Whether the bytes are UTF-8. Names and ids are short and ASCII: checking
/// that first costs a fraction of a full validation's setup.
pub fn is_text(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// The bytes as text, empty if they are not UTF-8. Spans are read many times
/// per record (its id and type by every step), and a full validation of a
/// short name was a twentieth of feature-state's instructions per event.
#[allow(unsafe_code)]
fn as_text(bytes: &[u8]) -> &str {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are UTF-8, whatever buffer they came from.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    } else {
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

/// Appends `v` as a protobuf varint.
pub fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field's value as the wire carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Varint(u64),
    Fixed64(u64),
    Len(Range<usize>),
    Fixed32,
}

/// A reader of protobuf fields over a buffer.
pub struct Wire<'a> {
    pub buf: &'a [u8],
    /// Where the next field starts.
    pub at: usize,
}

impl<'a> Wire<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// The next field: `Some(None)` at the end, `None` for what this reader
    /// does not take (malformed data, groups, field number 0).
    pub fn next_field(&mut self) -> Option<Option<(u32, Value)>> {
        if self.at >= self.buf.len() {
            return Some(None);
        }
        // prost refuses keys past u32 and field number 0.
        let key = u32::try_from(self.varint()?).ok()?;
        let tag = Some(key >> 3).filter(|t| *t > 0)?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let start = self.at;
                self.take(len)?;
                Value::Len(start..self.at)
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            _ => return None,
        };
        Some(Some((tag, value)))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let bytes = self.buf.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    #[inline]
    pub fn varint(&mut self) -> Option<u64> {
        // Keys and lengths: one byte.
        let first = *self.buf.get(self.at)?;
        if first < 0x80 {
            self.at += 1;
            return Some(u64::from(first));
        }
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // The tenth byte may only hold the top bit.
                return (i < 9 || byte <= 1).then_some(value);
            }
        }
        None
    }
}

/// A record read in place by `read`, holding `payload` as its buffer (`keep`),
/// or decoded by prost when `read` does not take the bytes.
pub fn decode_in_place<R, M>(
    payload: Bytes,
    read: fn(&[u8]) -> Option<R>,
    keep: fn(&mut R, Bytes),
) -> Result<R, prost::DecodeError>
where
    R: From<M>,
    M: prost::Message + Default,
{
    match read(&payload) {
        Some(mut record) => {
            keep(&mut record, payload);
            Ok(record)
        }
        None => Ok(R::from(M::decode(payload)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_ascii_and_other_utf8_as_text_and_anything_else_as_empty() {
        let buf = "id-7 é ü".as_bytes().to_vec();
        let span = |r: Range<usize>| Span::of(r).expect("small");
        assert_eq!(span(0..4).text(&buf), "id-7");
        assert_eq!(span(5..buf.len()).text(&buf), "é ü");
        // Half of `é`: not UTF-8, so no text.
        assert_eq!(span(5..6).text(&buf), "");
        assert_eq!(Span::text_of(&buf, 5..6), None);
        assert_eq!(span(0..0).text(&buf), "");
    }
}
