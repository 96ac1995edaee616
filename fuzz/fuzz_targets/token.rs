//! Fuzz target `token`: see `pvid_core::fuzzing::token` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvid_core::fuzzing::token(data));
