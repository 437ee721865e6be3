//! A `wasi:keyvalue@0.2.0-draft` application (the shape wasmtime 48's
//! `wasmtime-wasi-keyvalue` implements: `u64` increments and `u64` list cursors, no CAS).
//! Commands:
//!
//! - `suite BUCKET`: every function of store, atomics and batch, checked; `ok <step>` lines.
//! - `open BUCKET`: `opened`, or `open-error <error>` and a failed exit (WASI 0.2 carries
//!   no exit code but success or failure).
//! - `set BUCKET KEY VALUE`, `get BUCKET KEY`: one value, as text.
//! - `incr BUCKET KEY TIMES`: `increment` by 1, TIMES times; prints the last value.
//! - `list BUCKET PAUSE_MS`: every key, page by page, sleeping between pages; `key <k>`
//!   lines, then `pages <n>`.

#[cfg(target_arch = "wasm32")]
#[path = "../common.rs"]
mod common;

#[cfg(target_arch = "wasm32")]
mod app {
    wit_bindgen::generate!({
        path: [
            "../../wit/deps/keyvalue-0.2.0-draft2",
            "../../wit/deps/keyvalue-0.2.0-draft",
            "wit",
        ],
        world: "taskstore:kv-consumer/consumer-draft@0.1.0",
        generate_all,
    });

    use std::process::exit;

    use self::wasi::keyvalue0_2_0_draft::{atomics, batch, store};
    use crate::common::*;

    fn open(name: &str) -> store::Bucket {
        match store::open(name) {
            Ok(bucket) => bucket,
            Err(err) => {
                println!("open-error {err:?}");
                exit(3)
            }
        }
    }

    pub fn main() {
        let args = args();
        let bucket_name = arg(&args, 1, "bucket");
        match arg(&args, 0, "command").as_str() {
            "suite" => suite(&open(&bucket_name)),
            "open" => {
                open(&bucket_name);
                println!("opened");
            }
            "set" => {
                let bucket = open(&bucket_name);
                let value = arg(&args, 3, "value");
                expect("set", bucket.set(&arg(&args, 2, "key"), value.as_bytes()));
                println!("set");
            }
            "get" => {
                let bucket = open(&bucket_name);
                match expect("get", bucket.get(&arg(&args, 2, "key"))) {
                    Some(value) => println!("value {}", String::from_utf8_lossy(&value)),
                    None => println!("absent"),
                }
            }
            "incr" => {
                let bucket = open(&bucket_name);
                let key = arg(&args, 2, "key");
                let mut last = 0;
                for _ in 0..number::<u32>(&args, 3, "times") {
                    last = expect("incr", atomics::increment(&bucket, &key, 1));
                }
                println!("value {last}");
            }
            "list" => {
                let bucket = open(&bucket_name);
                let pause_ms = number::<u64>(&args, 2, "pause-ms");
                let mut cursor = None;
                let mut pages = 0;
                loop {
                    let page = expect("list-keys", bucket.list_keys(cursor));
                    pages += 1;
                    for key in page.keys {
                        println!("key {key}");
                    }
                    match page.cursor {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                    pause(pause_ms);
                }
                println!("pages {pages}");
            }
            other => {
                eprintln!("unknown command {other}");
                exit(2)
            }
        }
    }

    fn suite(bucket: &store::Bucket) {
        let binary = binary_value();
        expect("set-binary", bucket.set("binary", &binary));
        let read = expect("get-binary", bucket.get("binary"));
        check("get-binary", read.as_deref() == Some(&binary[..]), || {
            format!("{read:?}")
        });
        println!("ok binary");
        expect("set-empty", bucket.set("empty", b""));
        let read = expect("get-empty", bucket.get("empty"));
        check("get-empty", read == Some(Vec::new()), || {
            format!("{read:?}")
        });
        println!("ok empty");
        let large = large_value(4 * 1024 * 1024 + 7);
        expect("set-large", bucket.set("large", &large));
        let read = expect("get-large", bucket.get("large"));
        check("get-large", read.as_deref() == Some(&large[..]), || {
            format!("{:?} bytes", read.as_ref().map(Vec::len))
        });
        println!("ok large");

        check(
            "exists",
            expect("exists", bucket.exists("binary")),
            String::new,
        );
        check(
            "exists-absent",
            !expect("exists", bucket.exists("nope")),
            String::new,
        );
        expect("delete", bucket.delete("binary"));
        expect("delete-absent", bucket.delete("nope"));
        check(
            "deleted",
            !expect("exists", bucket.exists("binary")),
            String::new,
        );
        let read = expect("get-deleted", bucket.get("binary"));
        check("get-deleted", read.is_none(), || format!("{read:?}"));
        println!("ok exists-delete");

        // increment: unsigned here; a delta over i64::MAX is refused, the value unchanged.
        let value = expect("increment", atomics::increment(bucket, "counter", 5));
        check("increment", value == 5, || value.to_string());
        let value = expect("increment", atomics::increment(bucket, "counter", 2));
        check("increment-again", value == 7, || value.to_string());
        let err = atomics::increment(bucket, "counter", u64::MAX).unwrap_err();
        check(
            "increment-too-large",
            format!("{err:?}").contains("unchanged"),
            || format!("{err:?}"),
        );
        let value = expect("increment", atomics::increment(bucket, "counter", 0));
        check("increment-unchanged", value == 7, || value.to_string());
        expect("set-text", bucket.set("text", b"abc"));
        let err = atomics::increment(bucket, "text", 1).unwrap_err();
        check(
            "increment-text",
            format!("{err:?}").contains("not a decimal integer"),
            || format!("{err:?}"),
        );
        println!("ok increment");

        let pairs: Vec<(String, Vec<u8>)> = vec![
            ("b1".into(), b"one".to_vec()),
            ("b2".into(), Vec::new()),
            ("b3".into(), binary_value()),
        ];
        expect("set-many", batch::set_many(bucket, &pairs));
        let keys: Vec<String> = vec!["b1".into(), "b-missing".into(), "b2".into(), "b3".into()];
        let read = expect("get-many", batch::get_many(bucket, &keys));
        let expected = vec![
            Some(pairs[0].clone()),
            None,
            Some(pairs[1].clone()),
            Some(pairs[2].clone()),
        ];
        check("get-many", read == expected, || format!("{read:?}"));
        expect("delete-many", batch::delete_many(bucket, &keys));
        let read = expect("get-many", batch::get_many(bucket, &keys));
        check("deleted-many", read.iter().all(Option::is_none), || {
            format!("{read:?}")
        });
        println!("ok batch");

        let names: Vec<String> = (0..2500).map(|i| format!("list-{i}")).collect();
        for chunk in names.chunks(500) {
            let pairs: Vec<(String, Vec<u8>)> =
                chunk.iter().map(|k| (k.clone(), b"v".to_vec())).collect();
            expect("set-many-list", batch::set_many(bucket, &pairs));
        }
        let mut listed = std::collections::BTreeSet::new();
        let mut cursor: Option<u64> = None;
        let mut pages = 0;
        loop {
            let page = expect("list-keys", bucket.list_keys(cursor));
            pages += 1;
            listed.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let missing: Vec<&String> = names.iter().filter(|k| !listed.contains(*k)).collect();
        check("list-keys", missing.is_empty(), || {
            let first = &missing[..missing.len().min(10)];
            format!("{} keys missing, among them {first:?}", missing.len())
        });
        for other in ["empty", "large", "counter", "text"] {
            check("list-keys", listed.contains(other), || {
                format!("{other} not listed")
            });
        }
        check("list-keys", listed.len() == names.len() + 4, || {
            format!("{} keys listed", listed.len())
        });
        check("list-pages", pages >= 2, || format!("{pages} pages"));
        println!("ok list-keys {} keys {pages} pages", listed.len());
        println!("suite passed");
    }
}

fn main() {
    #[cfg(target_arch = "wasm32")]
    app::main();
}
