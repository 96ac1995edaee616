//! Golden files: the render of `examples/preview.yaml` (with the registry `pvid up` published
//! for it, without secrets) is byte-identical to `tests/golden/<target>/`. Set `PVID_BLESS=1` to
//! rewrite them after an intended change, then review the diff.

use pvid_render::Target;
use std::collections::BTreeSet;
use std::path::Path;

use super::support::{crate_dir, render_example};

fn files_under(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, base, out);
        } else {
            out.insert(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

fn check(target: Target) {
    let dir = crate_dir().join("tests/golden").join(target.as_str());
    let rendered = render_example(target);
    let bless = std::env::var_os("PVID_BLESS").is_some_and(|v| v == "1");
    if bless {
        let _ = std::fs::remove_dir_all(&dir);
        for f in &rendered.files {
            let path = dir.join(&f.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &f.contents).unwrap();
        }
    }
    let mut on_disk = BTreeSet::new();
    files_under(&dir, &dir, &mut on_disk);
    let produced: BTreeSet<String> = rendered.files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(produced, on_disk, "{target}: rendered files differ from tests/golden/{target} (PVID_BLESS=1 to update)");
    for f in &rendered.files {
        let want = std::fs::read_to_string(dir.join(&f.path)).unwrap();
        assert!(want == f.contents, "{target}/{}: differs from the golden file (PVID_BLESS=1 to update)\n--- rendered\n{}", f.path, f.contents);
    }
}

#[test]
fn kubernetes_output_matches_golden_files() {
    check(Target::K8s);
}

#[test]
fn istio_output_matches_golden_files() {
    check(Target::Istio);
}

#[test]
fn linkerd_output_matches_golden_files() {
    check(Target::Linkerd);
}

#[test]
fn compose_output_matches_golden_files() {
    check(Target::Compose);
}

#[test]
fn serverless_output_matches_golden_files() {
    check(Target::Serverless);
}

#[test]
fn rendering_twice_gives_identical_bytes() {
    for target in Target::ALL {
        assert_eq!(render_example(target), render_example(target), "{target}");
    }
}
