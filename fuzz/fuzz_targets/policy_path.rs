//! Fuzz target `policy_path`: see `pvid_core::fuzzing::policy_path` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvid_core::fuzzing::policy_path(data));
