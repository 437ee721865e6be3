//! Reply decoding: whatever a server sends, `decode_reply` returns (never panics, never
//! allocates past its limits), and it tells "incomplete" from "malformed" consistently:
//! every proper prefix of a complete reply is "incomplete", never an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskstore::resp::{check_reply, decode_reply, ReplyLimits};

const LIMITS: ReplyLimits = ReplyLimits {
    max_bulk_bytes: 1 << 16,
    max_array_len: 1 << 10,
    max_reply_bytes: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let outcome = decode_reply(data, &LIMITS);
    let checked = check_reply(data, &LIMITS);
    match outcome {
        Ok(Some((_reply, used))) => {
            assert!(
                used > 0 && used <= data.len(),
                "consumed {used} of {}",
                data.len()
            );
            assert_eq!(checked, Ok(true));
            // The same reply on its own decodes the same way, and nothing before its end
            // looks malformed: a reply trickling in byte by byte is waited for.
            match decode_reply(&data[..used], &LIMITS) {
                Ok(Some((_, again))) => assert_eq!(again, used),
                other => panic!("the reply alone decodes as {other:?}"),
            }
            let step = (used / 64).max(1);
            for end in (0..used).step_by(step) {
                assert!(
                    matches!(decode_reply(&data[..end], &LIMITS), Ok(None)),
                    "prefix of {end} of {used} bytes is not incomplete"
                );
            }
        }
        Ok(None) => assert_eq!(checked, Ok(false)),
        Err(_) => {}
    }
});
