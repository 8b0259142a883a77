//! `infergate check-config` on the shipped configs and on broken fixtures, run as the real
//! binary. Each fixture lists the problems it must produce in `# expect:` lines, written by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

fn infergate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_infergate"))
}

/// The file names of `files`.
fn names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_is_valid() {
    let files = yaml_files("config");
    let names = names(&files);
    for shipped in ["local.yaml", "sidecar.yaml", "edge-kubernetes.yaml"] {
        assert!(
            names.iter().any(|n| n == shipped),
            "config/ should hold the default (local.yaml) and the examples; {shipped} is missing: {names:?}"
        );
    }
    for file in files {
        let out = infergate().arg("check-config").arg(&file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok: gateway "), "{stdout}");
        assert_eq!(
            stdout.lines().count(),
            1,
            "one summary line per file: {stdout}"
        );
    }
}

#[test]
fn broken_configs_list_every_expected_problem() {
    let files = yaml_files("tests/fixtures/bad-config");
    let names = names(&files);
    for fixture in [
        "chatops.yaml",
        "duplicate-pool.yaml",
        "empty-pools.yaml",
        "gpu-source.yaml",
        "many-problems.yaml",
        "min-greater-than-max.yaml",
        "negative-duration.yaml",
        "rollout.yaml",
        "scaler-policy.yaml",
        "syntax-error.yaml",
        "tracing.yaml",
        "unknown-key.yaml",
        "versions.yaml",
        "wrong-type.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == fixture),
            "{fixture} missing: {names:?}"
        );
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let out = infergate().arg("check-config").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", file.display());
        assert!(out.stdout.is_empty(), "nothing on stdout for a bad file");
        let problems: Vec<&str> = stderr.lines().skip(1).map(str::trim).collect();
        let mut cursor = 0;
        for want in &expected {
            // Problems come in file order; each expectation is found after the previous one.
            let found = problems[cursor..].iter().position(|p| p.contains(want));
            let Some(offset) = found else {
                panic!(
                    "{}: expected `{want}` in order, got:\n{stderr}",
                    file.display()
                );
            };
            cursor += offset + 1;
        }
        // Fixtures whose expectations name whole problems must produce exactly those.
        if expected
            .iter()
            .all(|e| e.contains(": ") && e.starts_with("line "))
        {
            assert_eq!(
                problems.len(),
                expected.len(),
                "{}:\n{stderr}",
                file.display()
            );
        }
    }
}

#[test]
fn unreadable_file_is_one_clear_error() {
    let out = infergate()
        .args(["check-config", "/nonexistent/infergate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing on stdout for a bad file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(
        lines[0], "/nonexistent/infergate.yaml: 1 problem:",
        "{stderr}"
    );
    assert!(
        lines[1].trim_start().starts_with("cannot read the file: "),
        "{stderr}"
    );
}

#[test]
fn serve_with_a_broken_config_starts_nothing_and_fails() {
    let bad =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad-config/many-problems.yaml");
    let out = infergate()
        .arg("serve")
        .arg("--config")
        .arg(bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("8 problems"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn config_reference_in_docs_is_current() {
    let out = infergate().arg("config-reference").output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md"))
            .expect("docs/config.md exists");
    assert!(
        generated == committed,
        "docs/config.md is out of date: run `cargo run -- config-reference > docs/config.md`"
    );
    // Every field of the schema is in it, with its unit where it has one.
    for key in [
        "pools[].scaler.max_replicas",
        "listeners.max_body_size",
        "pools[].timeouts.connect",
    ] {
        assert!(generated.contains(&format!("`{key}`")), "{key} missing");
    }
}

#[test]
fn no_subcommand_prints_help() {
    let out = infergate().output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("Usage: infergate"), "{all}");
    assert!(all.contains("Examples:"), "{all}");
    let version = infergate().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("infergate "));
}
