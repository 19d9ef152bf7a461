//! Jute primitives.
//!
//! Jute is the serialisation of ZooKeeper's `.jute` records: `int` and `long`
//! are big-endian, `boolean` is one byte, `ustring` and `buffer` are an `int`
//! length followed by bytes (`-1` is null), `vector<T>` is an `int` count
//! followed by the elements (`-1` is null), and a record is its fields in
//! order with no framing of its own.

use thiserror::Error;

/// Why a jute record could not be read. Each variant names the first thing
/// that was wrong, so a server can log it and close only that connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("record ends early: needed {needed} more bytes at offset {offset}")]
    UnexpectedEof { offset: usize, needed: usize },
    #[error("invalid length {len} at offset {offset}")]
    BadLength { offset: usize, len: i32 },
    #[error("unknown opcode {0}")]
    UnknownOpCode(i32),
    #[error("operation {op} is not allowed inside {context}")]
    BadMultiOp { op: i32, context: &'static str },
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

/// A cursor over one frame's body.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// The unread tail, without consuming it.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEof { offset: self.pos, needed: n - self.remaining() });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        // Java's DataInput.readBoolean: any non-zero byte is true.
        Ok(self.array::<1>()?[0] != 0)
    }

    /// A length-prefixed byte run; `None` for the null marker `-1`.
    pub fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let offset = self.pos;
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        // A length can never exceed what is left of the frame, so this check
        // also bounds every allocation by the frame size.
        if len < 0 || len as usize > self.remaining() {
            return Err(DecodeError::BadLength { offset, len });
        }
        self.take(len as usize).map(Some)
    }

    /// A vector's element count; `-1` (null) reads as empty. The count is
    /// checked against the bytes left (every element is at least one byte),
    /// so a hostile count cannot make us reserve gigabytes.
    pub fn count(&mut self) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let len = self.i32()?;
        if len == -1 {
            return Ok(0);
        }
        if len < 0 || len as usize > self.remaining() {
            return Err(DecodeError::BadLength { offset, len });
        }
        Ok(len as usize)
    }

    /// Fails unless the whole body was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// A value with a jute encoding.
pub trait Jute: Sized {
    fn write(&self, out: &mut Vec<u8>);
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Decodes a whole body, rejecting trailing bytes.
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = Self::read(&mut r)?;
        r.finish()?;
        Ok(v)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

impl Jute for i32 {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.i32()
    }
}

impl Jute for i64 {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.i64()
    }
}

impl Jute for bool {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.bool()
    }
}

/// `ustring`. Null reads as the empty string: every place the protocol
/// carries a string, ZooKeeper treats null and empty alike (both fail path
/// validation). Invalid UTF-8 is replaced, as Java's `new String(b, UTF_8)` does.
/// Writes a `ustring` from a borrowed `str` (what `String::write` writes).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_bytes(out, s.as_bytes());
}

impl Jute for String {
    fn write(&self, out: &mut Vec<u8>) {
        write_str(out, self);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.nullable_bytes()? {
            None => String::new(),
            Some(b) => String::from_utf8_lossy(b).into_owned(),
        })
    }
}

/// `buffer` where null and empty mean the same (passwords, auth tokens).
impl Jute for Vec<u8> {
    fn write(&self, out: &mut Vec<u8>) {
        write_bytes(out, self);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(r.nullable_bytes()?.map(<[u8]>::to_vec).unwrap_or_default())
    }
}

/// Writes a `buffer` that may be null (length -1): znode data, wherever
/// it is encoded (replies, log records, snapshots).
pub fn write_nullable_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => (-1i32).write(out),
        Some(b) => write_bytes(out, b),
    }
}

/// `buffer` where null is distinct from empty (znode data: a node created
/// with null data reads back as null, and clients can tell).
impl Jute for Option<Vec<u8>> {
    fn write(&self, out: &mut Vec<u8>) {
        write_nullable_bytes(out, self.as_deref());
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(r.nullable_bytes()?.map(<[u8]>::to_vec))
    }
}

/// `vector<T>`; null reads as empty.
impl<T: Jute> Jute for Vec<T>
where
    T: VectorElement,
{
    fn write(&self, out: &mut Vec<u8>) {
        (self.len() as i32).write(out);
        for item in self {
            item.write(out);
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count()?;
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(T::read(r)?);
        }
        Ok(v)
    }
}

/// Marks the types that may appear in a jute `vector`. It keeps `Vec<u8>`
/// (a `buffer`) apart from a vector of records.
pub trait VectorElement {}
impl VectorElement for String {}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    (b.len() as i32).write(out);
    out.extend_from_slice(b);
}

/// Declares a jute record: a struct whose encoding is its fields in order.
macro_rules! record {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }

        impl $crate::codec::Jute for $name {
            fn write(&self, _out: &mut Vec<u8>) {
                $($crate::codec::Jute::write(&self.$field, _out);)*
            }
            fn read(_r: &mut $crate::codec::Reader<'_>) -> Result<Self, $crate::codec::DecodeError> {
                Ok(Self { $($field: $crate::codec::Jute::read(_r)?),* })
            }
        }

        impl $crate::codec::VectorElement for $name {}
    };
}
pub(crate) use record;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_empty_buffers_stay_distinct() {
        let none: Option<Vec<u8>> = None;
        assert_eq!(none.to_bytes(), vec![0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Option::<Vec<u8>>::decode(&none.to_bytes()), Ok(None));
        let empty = Some(Vec::new());
        assert_eq!(Option::<Vec<u8>>::decode(&empty.to_bytes()), Ok(empty));
    }

    #[test]
    fn hostile_lengths_are_rejected_not_allocated() {
        // A string claiming 2 GiB in a 4-byte body.
        let body = i32::MAX.to_be_bytes();
        assert!(matches!(String::decode(&body), Err(DecodeError::BadLength { .. })));
        let body = (-2i32).to_be_bytes();
        assert!(matches!(String::decode(&body), Err(DecodeError::BadLength { .. })));
        // A vector claiming a billion elements.
        let body = 1_000_000_000i32.to_be_bytes();
        assert!(matches!(Vec::<String>::decode(&body), Err(DecodeError::BadLength { .. })));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut b = 7i32.to_bytes();
        b.push(0);
        assert_eq!(i32::decode(&b), Err(DecodeError::Trailing(1)));
    }
}
