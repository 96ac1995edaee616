//! Fuzz target `jwks`: see `pvid_core::fuzzing::jwks` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvid_core::fuzzing::jwks(data));
