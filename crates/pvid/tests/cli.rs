//! End-to-end tests of the `pvid` binary: real processes, real files, real HTTP on loopback.

mod cli {
    pub mod support;

    mod crash;
    mod demo;
    mod doctor;
    mod explain;
    mod lifecycle;
    mod matrix;
    mod otlp;
    mod secrets;
    mod render;
    mod rotate;
    mod openbao;
    mod serve;
    mod spec_errors;
    mod token_verify;
}
