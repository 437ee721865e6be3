//! A `wasi:keyvalue@0.2.0-draft2` application (the shape Spin apps import). Commands:
//!
//! - `suite BUCKET`: every function of store, atomics and batch, checked; `ok <step>` lines.
//! - `open BUCKET`: `opened`, or `open-error <error>` and a failed exit (WASI 0.2 carries
//!   no exit code but success or failure).
//! - `set BUCKET KEY VALUE`, `get BUCKET KEY`: one value, as text.
//! - `incr BUCKET KEY TIMES`: `increment` by 1, TIMES times; prints the last value.
//! - `cas-incr BUCKET KEY TIMES`: TIMES increments by `cas` + `swap`, retrying with the
//!   handle a failed swap returns; prints `done <failed swaps>`.
//! - `cas-race BUCKET KEY VALUE`: reads a CAS handle, waits until two racers have theirs
//!   (counted in the key `race-arrived`), swaps; prints `swapped` or `cas-failed <current>`.
//! - `list BUCKET PAUSE_MS`: every key, page by page, sleeping between pages; `key <k>`
//!   lines, then `pages <n>`.
//! - `connect ADDRESS`: a TCP connection of its own, past the key-value component:
//!   `connected`, or `refused <error>` (what the host's sandbox lets through).

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
        world: "taskstore:kv-consumer/consumer-draft2@0.1.0",
        generate_all,
    });

    use std::process::exit;

    use self::wasi::keyvalue0_2_0_draft2::{atomics, batch, store};
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
            "connect" => match std::net::TcpStream::connect(bucket_name.as_str()) {
                Ok(_) => println!("connected"),
                Err(err) => println!("refused {err}"),
            },
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
            "cas-incr" => {
                let bucket = open(&bucket_name);
                let key = arg(&args, 2, "key");
                let mut failures = 0;
                for _ in 0..number::<u32>(&args, 3, "times") {
                    let mut cas = expect("cas-new", atomics::Cas::new(&bucket, &key));
                    loop {
                        let current = expect("cas-current", cas.current());
                        let count: u64 = current
                            .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
                            .unwrap_or(0);
                        match atomics::swap(cas, (count + 1).to_string().as_bytes()) {
                            Ok(()) => break,
                            Err(atomics::CasError::CasFailed(newer)) => {
                                failures += 1;
                                cas = newer;
                            }
                            Err(atomics::CasError::StoreError(err)) => {
                                println!("FAIL cas-incr: {err:?}");
                                exit(1)
                            }
                        }
                    }
                }
                println!("done {failures}");
            }
            "cas-race" => {
                let bucket = open(&bucket_name);
                let key = arg(&args, 2, "key");
                let cas = expect("cas-new", atomics::Cas::new(&bucket, &key));
                expect("arrive", atomics::increment(&bucket, "race-arrived", 1));
                let mut waited = 0;
                while expect("arrived", atomics::increment(&bucket, "race-arrived", 0)) < 2 {
                    check("race", waited < 30_000, || {
                        "the other racer never came".into()
                    });
                    pause(5);
                    waited += 5;
                }
                match atomics::swap(cas, arg(&args, 3, "value").as_bytes()) {
                    Ok(()) => println!("swapped"),
                    Err(atomics::CasError::CasFailed(newer)) => {
                        let current = expect("cas-current", newer.current()).unwrap_or_default();
                        println!("cas-failed {}", String::from_utf8_lossy(&current));
                    }
                    Err(atomics::CasError::StoreError(err)) => {
                        println!("FAIL cas-race: {err:?}");
                        exit(1)
                    }
                }
            }
            "list" => {
                let bucket = open(&bucket_name);
                let pause_ms = number::<u64>(&args, 2, "pause-ms");
                let mut cursor = None;
                let mut pages = 0;
                loop {
                    let page = expect("list-keys", bucket.list_keys(cursor.as_deref()));
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
        // Values are bytes: binary, empty (present, not absent) and large.
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

        // exists / delete, and deleting what is absent.
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

        // increment: absent counts as 0; signed; a non-integer is an error, unchanged.
        let value = expect("increment", atomics::increment(bucket, "counter", 5));
        check("increment", value == 5, || value.to_string());
        let value = expect("increment", atomics::increment(bucket, "counter", -7));
        check("increment-negative", value == -2, || value.to_string());
        expect("set-text", bucket.set("text", b"abc"));
        let err = atomics::increment(bucket, "text", 1).unwrap_err();
        check(
            "increment-text",
            format!("{err:?}").contains("not a decimal integer"),
            || format!("{err:?}"),
        );
        let read = expect("get-text", bucket.get("text"));
        check(
            "text-unchanged",
            read.as_deref() == Some(b"abc".as_slice()),
            || format!("{read:?}"),
        );
        expect(
            "set-max",
            bucket.set("max", i64::MAX.to_string().as_bytes()),
        );
        let err = atomics::increment(bucket, "max", 1).unwrap_err();
        check(
            "increment-overflow",
            format!("{err:?}").contains("overflow"),
            || format!("{err:?}"),
        );
        println!("ok increment");

        // cas / swap: a current handle swaps; a stale one fails with the newer value, and the
        // handle it returns swaps.
        expect("set-cas", bucket.set("cas", b"1"));
        let cas = expect("cas-new", atomics::Cas::new(bucket, "cas"));
        let current = expect("cas-current", cas.current());
        check(
            "cas-current",
            current.as_deref() == Some(b"1".as_slice()),
            || format!("{current:?}"),
        );
        expect("swap", atomics::swap(cas, b"2"));
        let stale = expect("cas-new", atomics::Cas::new(bucket, "cas"));
        expect("set-between", bucket.set("cas", b"3"));
        let newer = match atomics::swap(stale, b"4") {
            Err(atomics::CasError::CasFailed(newer)) => newer,
            other => {
                println!("FAIL swap-stale: {:?}", other.map_err(|e| format!("{e:?}")));
                exit(1)
            }
        };
        let current = expect("cas-current", newer.current());
        check(
            "cas-failed-current",
            current.as_deref() == Some(b"3".as_slice()),
            || format!("{current:?}"),
        );
        expect("swap-retry", atomics::swap(newer, b"4"));
        let read = expect("get-cas", bucket.get("cas"));
        check("swapped", read.as_deref() == Some(b"4".as_slice()), || {
            format!("{read:?}")
        });
        let fresh = expect("cas-new-absent", atomics::Cas::new(bucket, "cas-absent"));
        check(
            "cas-absent",
            expect("cas-current", fresh.current()).is_none(),
            String::new,
        );
        expect("swap-absent", atomics::swap(fresh, b"x"));
        println!("ok cas");

        // batch
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

        // list-keys: every key of the bucket, through cursors, nothing of other buckets.
        let names: Vec<String> = (0..2500).map(|i| format!("list-{i}")).collect();
        for chunk in names.chunks(500) {
            let pairs: Vec<(String, Vec<u8>)> =
                chunk.iter().map(|k| (k.clone(), b"v".to_vec())).collect();
            expect("set-many-list", batch::set_many(bucket, &pairs));
        }
        let mut listed = std::collections::BTreeSet::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = expect("list-keys", bucket.list_keys(cursor.as_deref()));
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
        for other in [
            "empty",
            "large",
            "counter",
            "text",
            "max",
            "cas",
            "cas-absent",
        ] {
            check("list-keys", listed.contains(other), || {
                format!("{other} not listed")
            });
        }
        check("list-keys", listed.len() == names.len() + 7, || {
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
