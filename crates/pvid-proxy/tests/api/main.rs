//! Public-API tests of the sidecar: real sockets on 127.0.0.1, a real echo upstream, real
//! registry files and log files. No sleeps on the happy path; waits are bounded polls.

mod cases;
mod egress;
mod inbound;
mod limits;
mod log_buffer;
mod otlp;
mod registry;
mod support;
