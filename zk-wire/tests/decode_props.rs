//! Property tests over arbitrary bytes: every decoder and the frame splitter
//! must return a value or a [`DecodeError`]/[`FrameError`], never panic,
//! never allocate beyond what the input could hold; and what decodes must
//! encode back to something that decodes to the same value.

use bytes::BytesMut;
use proptest::prelude::*;
use zk_wire::codec::{DecodeError, Jute};
use zk_wire::consts::{OpCode, DEFAULT_MAX_BUFFER};
use zk_wire::frame::{split_frame, FrameError};
use zk_wire::records::*;
use zk_wire::{Request, Response};

/// Bytes biased towards what breaks decoders: small and huge lengths,
/// -1 (null), and truncations of plausible records.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        Just(vec![0xff, 0xff, 0xff, 0xff]),
        Just(vec![0x7f, 0xff, 0xff, 0xff]),
        Just(vec![0x80, 0, 0, 0]),
        Just(vec![0, 0, 0, 0]),
        Just(vec![0, 0, 0, 1]),
        Just(vec![0, 0, 0, 4]),
        prop::collection::vec(any::<u8>(), 1..8),
    ];
    prop::collection::vec(word, 0..24).prop_map(|parts| parts.concat())
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..256), hostile_bytes()]
}

/// Decodes `bytes` as `T`; if that works, re-encodes and checks the round
/// trip; if not, the error must say where and what.
fn record_round_trip<T: Jute + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    match T::decode(bytes) {
        Ok(v) => {
            let again = T::decode(&v.to_bytes());
            prop_assert_eq!(again.as_ref(), Ok(&v));
        }
        Err(e) => clear(&e)?,
    }
    Ok(())
}

/// An error a server can log and a reader can act on: it names the offset
/// or the count involved, never an empty message.
fn clear(e: &DecodeError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(text.chars().any(|c| c.is_ascii_digit()), "unhelpful error: {text:?}");
    if let DecodeError::UnexpectedEof { offset, .. } | DecodeError::BadLength { offset, .. } = e {
        prop_assert!(text.contains(&offset.to_string()), "error without its offset: {text:?}");
    }
    Ok(())
}

macro_rules! every_record {
    ($bytes:expr, $($t:ty),* $(,)?) => {
        $( record_round_trip::<$t>($bytes)?; )*
    };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn records_decode_or_fail_cleanly(bytes in any_bytes()) {
        every_record!(
            &bytes,
            Id, Acl, Stat, ClientInfo, ConnectRequest, ConnectResponse, RequestHeader, ReplyHeader, MultiHeader,
            AuthPacket, SetWatches, SetWatches2, CreateRequest, CreateTtlRequest, DeleteRequest, PathWatchRequest,
            PathRequest, SetDataRequest, SetAclRequest, CheckVersionRequest, AddWatchRequest, WatchTypeRequest,
            WatcherEvent, ErrorResponse, PathResponse, Create2Response, StatResponse, GetDataResponse,
            ChildrenResponse, GetChildren2Response, GetAclResponse, GetAllChildrenNumberResponse, WhoAmIResponse,
        );
    }

    #[test]
    fn requests_decode_or_fail_cleanly(op in prop_oneof![
        prop::sample::select(OpCode::ALL.to_vec()).prop_map(OpCode::as_i32),
        any::<i32>(),
    ], bytes in any_bytes()) {
        match Request::decode(op, &bytes) {
            Ok(req) => {
                // What decoded re-encodes to a body that decodes the same.
                let mut body = Vec::new();
                req.write_body(&mut body);
                prop_assert_eq!(Request::decode(req.op_code().as_i32(), &body), Ok(req));
            }
            Err(DecodeError::UnknownOpCode(o)) => prop_assert!(OpCode::from_i32(o).is_none() || o == op),
            Err(e) => clear(&e)?,
        }
    }

    #[test]
    fn responses_decode_or_fail_cleanly(op in prop::sample::select(OpCode::ALL.to_vec()), bytes in any_bytes()) {
        match Response::decode(op, &bytes) {
            // addWatch's body is an ErrorResponse the typed value drops.
            Ok(resp) if op != OpCode::AddWatch => {
                let mut body = Vec::new();
                resp.write(&mut body);
                prop_assert_eq!(Response::decode(op, &body), Ok(resp));
            }
            Ok(_) => {}
            Err(e) => clear(&e)?,
        }
    }

    #[test]
    fn frames_split_or_fail_cleanly(bytes in any_bytes(), max in prop_oneof![Just(DEFAULT_MAX_BUFFER), 0usize..64]) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut seen = 0usize;
        loop {
            match split_frame(&mut buf, max) {
                Ok(Some(f)) => {
                    prop_assert!(f.len() <= max);
                    seen += 4 + f.len();
                }
                Ok(None) => {
                    // Needs more: what is left is a header or a short frame.
                    prop_assert_eq!(seen + buf.len(), bytes.len());
                    break;
                }
                Err(e @ FrameError::BadLength { len, .. }) => {
                    prop_assert!(len < 0 || len as usize > max);
                    prop_assert!(e.to_string().contains(&len.to_string()));
                    break;
                }
            }
        }
    }
}

#[test]
fn every_opcode_with_an_empty_body_is_handled() {
    for op in OpCode::ALL {
        let _ = Request::decode(op.as_i32(), &[]);
        let _ = Response::decode(*op, &[]);
    }
}
