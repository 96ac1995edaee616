//! `pvid proxy --otlp-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`: anything but plain http:// is
//! refused at start (exit 2), before any key or registry is read; the flag wins over the env.

use crate::cli::support::*;

fn proxy_with(env: &[(&str, &str)], extra: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let mut args =
        vec!["proxy", "--preview", "pr-1", "--service", "api", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"];
    args.extend_from_slice(extra);
    pvid_with(home.path(), &args, env, None)
}

#[test]
fn an_https_otlp_endpoint_is_refused_with_exit_code_2() {
    let out = proxy_with(&[], &["--otlp-endpoint", "https://otel:4318"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("only plain http://"), "{}", stderr(&out));

    let out = proxy_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel:4318")], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{}", stderr(&out));
}

#[test]
fn the_otlp_flag_wins_over_the_environment() {
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://from-env:4318")];
    let out = proxy_with(&env, &["--otlp-endpoint", "grpc://from-flag:4317"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("from-flag") && !stderr(&out).contains("from-env"), "{}", stderr(&out));
}
