//! The control-plane API through `router()` (no socket), over real stores: one shared suite run
//! against SQLite and against PostgreSQL (`PVID_TEST_PG_URL`; each test makes its own database).

mod support;

mod auth;
mod concurrency;
mod lifecycle;
mod metrics;
mod openapi;
