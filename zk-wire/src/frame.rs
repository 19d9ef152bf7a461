//! Framing: every packet is a 4-byte big-endian length and that many bytes.

use bytes::{Buf, BytesMut};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// ZooKeeper closes the connection on this ("Len error"): a length below
    /// zero or above `jute.maxbuffer` means the stream is not ours or is
    /// hostile, and nothing after it can be trusted.
    #[error("frame length {len} is outside 0..={max} (jute.maxbuffer)")]
    BadLength { len: i64, max: usize },
}

/// Splits one whole frame's body off the front of `buf`, if it holds one.
///
/// Returns `Ok(None)` when more bytes are needed. The length is checked
/// before anything is buffered for it, so a peer cannot make us reserve more
/// than `max` bytes.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 0 || len as usize > max {
        return Err(FrameError::BadLength { len: len.into(), max });
    }
    let len = len as usize;
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len)))
}

/// Starts a frame in `out`: reserves the length prefix, to be filled by
/// [`finish_frame`] once the body is written.
pub fn start_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    at
}

/// Writes the length of the frame started at `at`.
pub fn finish_frame(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}
