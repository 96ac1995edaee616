//! Tests of the rendered output through the public API: golden files, the edge property, the
//! policy and secret-file cases of testdata/cases/PROXY-AND-POLICY.md, target-specific errors,
//! and the real validators (kubernetes-validate, check-jsonschema, cloudcoil Istio models).

mod support;

mod cases;
mod edges;
mod errors;
mod golden;
mod validators;
