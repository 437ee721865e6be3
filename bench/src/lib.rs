//! Benchmarks of the taskstore workspace that need more than the CLI ships; see
//! `benches/http.rs` (`cargo bench -p taskstore-bench --bench http`). The library is empty:
//! the package exists for its benchmark, whose dependencies no other build needs.
