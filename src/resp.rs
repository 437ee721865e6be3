//! RESP2 codec: commands out, replies in. Pure functions over byte slices — no I/O — so the
//! whole codec is unit-tested natively on raw RESP literals.
//!
//! Replies are framed by `redis-protocol`. Before a buffer reaches it, [`check_reply`] walks
//! the frame headers so that a hostile or broken server cannot make the client allocate
//! without bound (`$999999999999`), recurse without bound (`*1\r\n*1\r\n…`), or wait forever
//! for a line that never ends.

use std::fmt;

use crate::text::excerpt;

pub use redis_protocol::resp2::types::OwnedFrame as Reply;
pub use taskstore_model::RedisErrorCode;

/// The classified code of an error reply (`-MOVED 3999 …` → [`RedisErrorCode::Moved`]);
/// `None` for any other reply. The one place a reply's error text is read for its meaning.
pub fn error_code(reply: &Reply) -> Option<RedisErrorCode> {
    match reply {
        Reply::Error(text) => Some(RedisErrorCode::of(text)),
        _ => None,
    }
}

/// Bounds applied to every reply before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Largest bulk string (`$<n>`) accepted, in bytes.
    pub max_bulk_bytes: usize,
    /// Largest array (`*<n>`) accepted, in elements.
    pub max_array_len: usize,
    /// Largest whole reply accepted, in bytes, headers included: a budget for callers that
    /// expect small replies (the host asking a cluster for its nodes), so that an array of
    /// many small elements cannot grow without bound either. `usize::MAX`: no budget.
    pub max_reply_bytes: usize,
}

impl ReplyLimits {
    /// Longest header or simple-string line (`+OK`, `-ERR …`, `:12`, `$5`) we wait for.
    /// Real Redis lines are far shorter; a longer one means we are not talking to Redis.
    pub const MAX_LINE_BYTES: usize = 64 * 1024;
    /// Deepest array nesting accepted. Our commands get replies at most two levels deep
    /// (SCAN); the bound keeps the recursive decoder's stack small.
    pub const MAX_DEPTH: usize = 8;
}

/// A reply that is not valid RESP2 or breaks [`ReplyLimits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Appends one command to `out` as a RESP array of bulk strings, one per argument.
///
/// # Format
/// `*<argc>\r\n` then, per argument, `$<len>\r\n<bytes>\r\n`. Arguments are never split or
/// joined, so values containing spaces, quotes or CRLF travel verbatim.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    // A capacity hint only (headers are at most 16 bytes): a different figure changes
    // allocations, never the bytes written, so cargo-mutants' `+`→`*` here are equivalent.
    let payload: usize = args.iter().map(|arg| arg.len() + 16).sum();
    out.reserve(payload + 16);
    push_header(out, b'*', args.len());
    for arg in args {
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    push_decimal(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Formats an unsigned integer without going through `fmt`, which costs measurable time and
/// code size in the guest.
pub fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Decodes the first reply in `buf`.
///
/// Ok(Some((reply, consumed))): a whole reply, `consumed` bytes long. Ok(None): the reply is
/// incomplete so far; read more and call again with the longer buffer. Err: the bytes can
/// never become a valid reply within `limits`.
pub fn decode_reply(
    buf: &[u8],
    limits: &ReplyLimits,
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    decode_reply_resuming(buf, limits, &mut ReplyScan::default())
}

/// [`decode_reply`] for a reply that arrives in pieces: `scan` remembers how far earlier
/// calls walked `buf`, so each call walks only what arrived since, and a reply read in `n`
/// pieces costs O(size), not O(size × n). Give it the same `buf` (grown at the end only)
/// on every call, and a fresh [`ReplyScan`] for the next reply.
pub fn decode_reply_resuming(
    buf: &[u8],
    limits: &ReplyLimits,
    scan: &mut ReplyScan,
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if !scan.check(buf, limits)? {
        return Ok(None);
    }
    match redis_protocol::resp2::decode::decode(buf) {
        Ok(Some((reply, consumed))) => Ok(Some((reply, consumed))),
        // check_reply saw a complete frame, so the decoder must too.
        Ok(None) => Err(ProtocolError("reply framing is inconsistent".into())),
        Err(err) => Err(ProtocolError(format!("malformed reply: {}", err.details()))),
    }
}

/// Walks the frame headers at the start of `buf` without copying anything.
///
/// Ok(true): `buf` starts with one complete reply within `limits`. Ok(false): what is there
/// so far is a valid, within-limits prefix of a reply. Err: it can never become one.
pub fn check_reply(buf: &[u8], limits: &ReplyLimits) -> Result<bool, ProtocolError> {
    ReplyScan::default().check(buf, limits)
}

/// How far a walk of a partly received reply got: the start of the first element not yet
/// complete, and the elements still expected at each open array level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyScan {
    /// Elements still expected at each open array level, innermost last.
    pending: [usize; ReplyLimits::MAX_DEPTH + 1],
    depth: usize,
    /// Where the first incomplete element starts.
    pos: usize,
    /// The reply was found complete: asked again, the answer stays yes.
    complete: bool,
}

impl ReplyScan {
    /// [`check_reply`], resumed where the last call on this scan stopped.
    pub fn check(&mut self, buf: &[u8], limits: &ReplyLimits) -> Result<bool, ProtocolError> {
        if self.complete {
            return Ok(true);
        }
        let complete = self.walk(buf, limits)?;
        self.complete = complete;
        if !complete && buf.len() > limits.max_reply_bytes {
            // Incomplete, so every byte of `buf` belongs to this one reply.
            return Err(over_budget(limits));
        }
        Ok(complete)
    }

    fn walk(&mut self, buf: &[u8], limits: &ReplyLimits) -> Result<bool, ProtocolError> {
        loop {
            // Progress is saved only at element boundaries: an element cut off by the end of
            // `buf` is walked again, whole, once more bytes are there.
            let mut pos = self.pos;
            let Some(&kind) = buf.get(pos) else {
                return Ok(false);
            };
            let Some(line_len) = find_crlf(&buf[pos + 1..]) else {
                if buf.len() - pos > ReplyLimits::MAX_LINE_BYTES {
                    return Err(ProtocolError(format!(
                        "reply line longer than {} bytes",
                        ReplyLimits::MAX_LINE_BYTES
                    )));
                }
                return Ok(false);
            };
            let line = &buf[pos + 1..pos + 1 + line_len];
            pos += 1 + line_len + 2;
            match kind {
                b'+' | b'-' => {}
                b':' => {
                    parse_integer(line).ok_or_else(|| invalid_header("integer", line))?;
                }
                b'$' => match parse_integer(line) {
                    Some(-1) => {}
                    Some(len) if len >= 0 => {
                        let len = len as u64;
                        if len > limits.max_bulk_bytes as u64 {
                            return Err(ProtocolError(format!(
                                "reply announces a {len}-byte value, more than the {}-byte limit",
                                limits.max_bulk_bytes
                            )));
                        }
                        // `>=` here is an equivalent mutant: a bulk ending exactly at the
                        // budget still has its CRLF to come, which the check below refuses.
                        if pos as u64 + len > limits.max_reply_bytes as u64 {
                            return Err(over_budget(limits));
                        }
                        let end = pos + len as usize;
                        if end + 2 > buf.len() {
                            return Ok(false);
                        }
                        if &buf[end..end + 2] != b"\r\n" {
                            return Err(ProtocolError(
                                "bulk string is not terminated by CRLF".into(),
                            ));
                        }
                        pos = end + 2;
                    }
                    _ => return Err(invalid_header("bulk length", line)),
                },
                b'*' => match parse_integer(line) {
                    Some(-1) | Some(0) => {}
                    // (`len >= 0` would be an equivalent mutant: 0 is matched just above.)
                    Some(len) if len > 0 => {
                        if len as u64 > limits.max_array_len as u64 {
                            return Err(ProtocolError(format!(
                                "reply announces a {len}-element array, more than the {}-element limit",
                                limits.max_array_len
                            )));
                        }
                        if self.depth == ReplyLimits::MAX_DEPTH {
                            return Err(ProtocolError(format!(
                                "reply nests arrays deeper than {} levels",
                                ReplyLimits::MAX_DEPTH
                            )));
                        }
                        self.depth += 1;
                        self.pending[self.depth] = len as usize;
                        self.pos = pos;
                        continue;
                    }
                    _ => return Err(invalid_header("array length", line)),
                },
                other => {
                    return Err(ProtocolError(format!(
                        "reply starts with byte 0x{other:02x}, not a RESP2 type marker"
                    )))
                }
            }
            self.pos = pos;
            if pos > limits.max_reply_bytes {
                return Err(over_budget(limits));
            }
            // One element finished: close every array it completes.
            loop {
                if self.depth == 0 {
                    return Ok(true);
                }
                self.pending[self.depth] -= 1;
                if self.pending[self.depth] > 0 {
                    break;
                }
                self.depth -= 1;
            }
        }
    }
}

fn over_budget(limits: &ReplyLimits) -> ProtocolError {
    ProtocolError(format!(
        "reply is larger than the {}-byte limit",
        limits.max_reply_bytes
    ))
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

fn parse_integer(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn invalid_header(what: &str, line: &[u8]) -> ProtocolError {
    let shown = excerpt(&String::from_utf8_lossy(line), 32);
    ProtocolError(format!("invalid {what} {shown} in reply"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReplyLimits = ReplyLimits {
        max_bulk_bytes: 1024,
        max_array_len: 16,
        max_reply_bytes: usize::MAX,
    };

    fn decode(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
        decode_reply(buf, &LIMITS)
    }

    fn budget(max_reply_bytes: usize) -> ReplyLimits {
        ReplyLimits {
            max_reply_bytes,
            ..LIMITS
        }
    }

    #[test]
    fn error_replies_are_classified_and_nothing_else_is() {
        assert_eq!(
            error_code(&Reply::Error("MOVED 1 127.0.0.1:7000".into())),
            Some(RedisErrorCode::Moved)
        );
        assert_eq!(
            error_code(&Reply::Error("ERR unknown".into())),
            Some(RedisErrorCode::Other)
        );
        assert_eq!(error_code(&Reply::SimpleString("MOVED".into())), None);
        assert_eq!(ProtocolError("bad".into()).to_string(), "bad");
    }

    #[test]
    fn an_empty_command_is_an_empty_array() {
        let mut out = Vec::new();
        encode_command(&mut out, &[]);
        assert_eq!(out, b"*0\r\n");
    }

    #[test]
    fn a_line_may_grow_to_exactly_the_line_limit_while_it_arrives() {
        let mut line = vec![b'+'];
        line.resize(ReplyLimits::MAX_LINE_BYTES, b'a');
        assert_eq!(check_reply(&line, &LIMITS), Ok(false));
        line.push(b'a');
        let err = check_reply(&line, &LIMITS).unwrap_err();
        assert_eq!(err.0, "reply line longer than 65536 bytes");
    }

    #[test]
    fn the_reply_budget_is_inclusive_and_counts_only_this_reply() {
        // 9 bytes: accepted with a budget of 9, refused with 8.
        assert_eq!(check_reply(b"$3\r\nabc\r\n", &budget(9)), Ok(true));
        assert!(check_reply(b"$3\r\nabc\r\n", &budget(8)).is_err());
        assert_eq!(check_reply(b"+OK\r\n", &budget(5)), Ok(true));
        // An incomplete reply may fill the budget exactly, not more.
        assert_eq!(check_reply(b"*2\r\n+abc\r", &budget(9)), Ok(false));
        assert!(check_reply(b"*2\r\n+abc\r\n", &budget(9)).is_err());
        // Bytes after a complete reply (the next pipelined reply) are not this reply's.
        assert_eq!(check_reply(b"+OK\r\n+NEXT\r\n", &budget(5)), Ok(true));
    }

    #[test]
    fn negative_lengths_other_than_minus_one_are_bad_headers() {
        let err = check_reply(b"$-2\r\n", &LIMITS).unwrap_err();
        assert!(err.0.contains("bulk length"), "{err}");
        let err = check_reply(b"*-2\r\n", &LIMITS).unwrap_err();
        assert!(err.0.contains("array length"), "{err}");
    }

    #[test]
    fn an_array_may_have_exactly_the_element_limit() {
        let mut reply = format!("*{}\r\n", LIMITS.max_array_len).into_bytes();
        for _ in 0..LIMITS.max_array_len {
            reply.extend_from_slice(b":1\r\n");
        }
        assert_eq!(check_reply(&reply, &LIMITS), Ok(true));
        let over = format!("*{}\r\n", LIMITS.max_array_len + 1);
        assert!(check_reply(over.as_bytes(), &LIMITS).is_err());
    }

    fn decode_whole(buf: &[u8]) -> Reply {
        let (reply, used) = decode(buf).expect("valid").expect("complete");
        assert_eq!(used, buf.len(), "whole buffer consumed");
        reply
    }

    /// A reply read in small pieces is walked once: after each piece the scan stands at
    /// the start of the one element still incomplete, so the next call starts there
    /// instead of at byte 0 (the cause of a quadratic read of a long streamed reply).
    #[test]
    fn scan_resumes_where_the_last_piece_ended() {
        let limits = ReplyLimits {
            max_bulk_bytes: 1024,
            max_array_len: 100_000,
            max_reply_bytes: usize::MAX,
        };
        let mut reply = b"*50000\r\n".to_vec();
        for i in 0..50_000 {
            reply.extend_from_slice(format!("${}\r\n{i}\r\n", i.to_string().len()).as_bytes());
        }
        let mut scan = ReplyScan::default();
        let mut last = 0;
        for end in (1..reply.len()).step_by(7) {
            assert!(!scan.check(&reply[..end], &limits).unwrap());
            assert!(scan.pos >= last && scan.pos <= end);
            // Only the element cut off by the end is left to walk again: at most one
            // header and a five-digit value.
            assert!(end - scan.pos < 14, "{end} {}", scan.pos);
            last = scan.pos;
        }
        assert!(scan.check(&reply, &limits).unwrap());
        let (decoded, used) = decode_reply_resuming(&reply, &limits, &mut scan)
            .unwrap()
            .unwrap();
        assert_eq!(used, reply.len());
        assert!(matches!(decoded, Reply::Array(items) if items.len() == 50_000));
    }

    #[test]
    fn replies_over_the_byte_budget_are_refused_complete_or_not() {
        let limits = ReplyLimits {
            max_bulk_bytes: 1024,
            max_array_len: 1024,
            max_reply_bytes: 64,
        };
        let small = b"*2\r\n:1\r\n$3\r\nabc\r\n";
        assert!(check_reply(small, &limits).unwrap());
        let many = b":1\r\n".repeat(20);
        let array = [b"*20\r\n".as_slice(), &many].concat();
        assert!(check_reply(&array, &limits).is_err());
        assert!(check_reply(&array[..70], &limits).is_err());
        // A bulk string announced past the budget is refused before its bytes arrive.
        assert!(check_reply(b"$100\r\n", &limits).is_err());
        let err = check_reply(&array, &limits).unwrap_err();
        assert!(err.0.contains("64-byte"), "{err}");
    }

    #[test]
    fn encodes_each_argument_as_a_bulk_string() {
        let mut out = Vec::new();
        encode_command(
            &mut out,
            &[b"SETEX", b"research_task:1", b"604800", b"{\"a\": \"b c\"}"],
        );
        assert_eq!(
            out,
            b"*4\r\n$5\r\nSETEX\r\n$15\r\nresearch_task:1\r\n$6\r\n604800\r\n$12\r\n{\"a\": \"b c\"}\r\n"
        );
    }

    #[test]
    fn encodes_empty_and_crlf_arguments_verbatim() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"", b"a\r\nb"]);
        assert_eq!(out, b"*2\r\n$0\r\n\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn decimal_formatting_matches_std() {
        for value in [0u64, 7, 10, 604800, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }

    #[test]
    fn decodes_every_reply_type() {
        assert_eq!(
            decode_whole(b"+OK\r\n"),
            Reply::SimpleString(b"OK".to_vec())
        );
        assert_eq!(
            decode_whole(b"-ERR wrong\r\n"),
            Reply::Error("ERR wrong".into())
        );
        assert_eq!(decode_whole(b":-2\r\n"), Reply::Integer(-2));
        assert_eq!(
            decode_whole(b"$3\r\na\r\n\r\n"),
            Reply::BulkString(b"a\r\n".to_vec())
        );
        assert_eq!(decode_whole(b"$0\r\n\r\n"), Reply::BulkString(Vec::new()));
        assert_eq!(decode_whole(b"$-1\r\n"), Reply::Null);
        assert_eq!(decode_whole(b"*-1\r\n"), Reply::Null);
        assert_eq!(decode_whole(b"*0\r\n"), Reply::Array(Vec::new()));
        assert_eq!(
            decode_whole(b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$-1\r\n"),
            Reply::Array(vec![
                Reply::BulkString(b"0".to_vec()),
                Reply::Array(vec![Reply::BulkString(b"a".to_vec()), Reply::Null]),
            ])
        );
    }

    #[test]
    fn every_strict_prefix_of_a_reply_is_incomplete() {
        let whole: &[u8] = b"*3\r\n$5\r\nhello\r\n:42\r\n*1\r\n+OK\r\n";
        for cut in 0..whole.len() {
            assert_eq!(decode(&whole[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        assert!(decode(whole).unwrap().is_some());
    }

    #[test]
    fn reports_bytes_consumed_and_leaves_the_next_reply() {
        let (reply, used) = decode(b"+OK\r\n:1\r\n").unwrap().unwrap();
        assert_eq!(reply, Reply::SimpleString(b"OK".to_vec()));
        assert_eq!(used, 5);
    }

    #[test]
    fn rejects_an_unknown_type_byte() {
        let err = decode(b"HTTP/1.1 400 Bad Request\r\n").unwrap_err();
        assert!(err.0.contains("0x48"), "{err}");
    }

    #[test]
    fn rejects_an_oversized_bulk_length_before_the_value_arrives() {
        let err = decode(b"$999999999999\r\n").unwrap_err();
        assert!(err.0.contains("999999999999-byte"), "{err}");
        assert!(decode(b"$1025\r\n").is_err());
        assert_eq!(decode(b"$1024\r\n"), Ok(None));
    }

    #[test]
    fn rejects_an_oversized_array_length() {
        assert!(decode(b"*17\r\n").is_err());
        assert!(decode(b"*9223372036854775807\r\n").is_err());
    }

    #[test]
    fn rejects_deep_nesting_without_recursing() {
        let deep = b"*1\r\n".repeat(100_000);
        let err = decode(&deep).unwrap_err();
        assert!(err.0.contains("deeper"), "{err}");
    }

    #[test]
    fn rejects_malformed_lengths_and_integers() {
        assert!(decode(b"$-2\r\n").is_err());
        assert!(decode(b"$abc\r\n").is_err());
        assert!(decode(b"*-5\r\n").is_err());
        assert!(decode(b":1.5\r\n").is_err());
        assert!(decode(b"$3\r\nabcde\r\n").is_err());
    }

    #[test]
    fn rejects_an_endless_line() {
        let line = [b'+'; ReplyLimits::MAX_LINE_BYTES + 2];
        assert!(decode(&line).is_err());
        assert_eq!(decode(&line[..1000]), Ok(None));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn reply_strategy() -> impl Strategy<Value = Reply> {
            let leaf = prop_oneof![
                "[a-zA-Z0-9 ]{0,20}".prop_map(|s| Reply::SimpleString(s.into_bytes())),
                "[a-zA-Z0-9 ]{0,20}".prop_map(Reply::Error),
                any::<i64>().prop_map(Reply::Integer),
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(Reply::BulkString),
                Just(Reply::Null),
            ];
            leaf.prop_recursive(3, 32, 6, |inner| {
                proptest::collection::vec(inner, 0..6).prop_map(Reply::Array)
            })
        }

        fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
            match reply {
                Reply::SimpleString(s) => {
                    out.push(b'+');
                    out.extend_from_slice(s);
                    out.extend_from_slice(b"\r\n");
                }
                Reply::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
                Reply::Integer(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
                Reply::BulkString(b) => {
                    push_header(out, b'$', b.len());
                    out.extend_from_slice(b);
                    out.extend_from_slice(b"\r\n");
                }
                Reply::Null => out.extend_from_slice(b"$-1\r\n"),
                Reply::Array(items) => {
                    push_header(out, b'*', items.len());
                    items.iter().for_each(|item| encode_reply(item, out));
                }
            }
        }

        proptest! {
            #[test]
            fn any_valid_reply_decodes_to_itself_and_no_prefix_does(reply in reply_strategy()) {
                let mut bytes = Vec::new();
                encode_reply(&reply, &mut bytes);
                prop_assert_eq!(decode(&bytes), Ok(Some((reply, bytes.len()))));
                for cut in 0..bytes.len() {
                    prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Ok(Some((_, used))) = decode(&bytes) {
                    prop_assert!(used <= bytes.len());
                }
            }

            #[test]
            fn commands_decode_as_arrays_of_their_arguments(
                args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8)
            ) {
                let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                let mut out = Vec::new();
                encode_command(&mut out, &refs);
                let expected = Reply::Array(args.iter().cloned().map(Reply::BulkString).collect());
                prop_assert_eq!(decode(&out), Ok(Some((expected, out.len()))));
            }
        }
    }
}
