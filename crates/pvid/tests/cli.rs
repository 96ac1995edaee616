//! End-to-end tests of the `pvid` binary: real processes, real files, real HTTP on loopback.

mod cli {
    pub mod support;

    mod demo;
    mod lifecycle;
    mod serve;
    mod spec_errors;
    mod token_verify;
}
