//! The rule lab: `trimtab rules test` on the shipped fixtures and on broken ones (the real
//! binary, the repository's rules).

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// `trimtab rules test` with these args: (exit code, stdout, stderr).
fn rules_test(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("rules")
        .arg("test")
        .args(args)
        .env_remove("TRIMTAB_CONFIG")
        .output()
        .expect("run trimtab rules test");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo_scripts() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .display()
        .to_string()
}

#[test]
fn the_shipped_fixtures_pass() {
    let (code, out, err) = rules_test(&["--dir", &repo_scripts()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 failed"), "{out}");
    for f in [
        "scroll_offer.toml",
        "hover_review.toml",
        "cta_by_context.toml",
    ] {
        assert!(out.contains(f), "{f} not run: {out}");
    }
    let (code, out, _) = rules_test(&["--dir", &repo_scripts(), "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert!(v["passed"].as_u64().unwrap() >= 15, "{v}");
    // The timer-driven case fires from a tick at 3 s into the hover.
    let hover = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().contains("3-second hover"))
        .expect("the hover case");
    assert_eq!(
        hover["got"][0]["trigger"],
        serde_json::Value::Null,
        "{hover}"
    );
}

#[test]
fn a_failing_case_shows_its_diff_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(scripts.join("tests")).unwrap();
    for f in [
        "scroll_offer.rhai",
        "hover_review.rhai",
        "cta_by_context.rhai",
    ] {
        std::fs::copy(Path::new(&repo_scripts()).join(f), scripts.join(f)).unwrap();
    }
    // The offer at 60% is expected, but the rule waits for 75%.
    std::fs::write(
        scripts.join("tests/wrong.toml"),
        r#"
rules = ["scroll_offer"]
[[case]]
name = "expects the offer too early"
context = { page = "/article/x", hour = 12 }
[[case.events]]
at = 0
type = "page_view"
props = { path = "/article/x" }
[[case.events]]
at = 1000
type = "scroll"
props = { depth = 60.0 }
[[case.events]]
at = 2000
type = "scroll"
props = { depth = 90.0 }
[[case.expect]]
at = 1000
slot = "offer"
variant = "discount"
"#,
    )
    .unwrap();
    let s = scripts.display().to_string();
    let (code, out, err) = rules_test(&["--dir", &s]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("FAIL  expects the offer too early"), "{out}");
    assert!(out.contains("- offer = discount at 1000 ms"), "{out}");
    assert!(out.contains("+ offer = discount at 2000 ms"), "{out}");
    assert!(out.contains("1 failed"), "{out}");
    // A rule that does not compile: exit 2, naming the file, line and column.
    std::fs::write(
        scripts.join("scroll_offer.rhai"),
        "const ON = [\"scroll\"];\nlet x = ;\n",
    )
    .unwrap();
    let (code, _, err) = rules_test(&["--dir", &s]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("scroll_offer.rhai:2:"), "{err}");
    // A fixture with an unknown key: exit 2, naming it.
    std::fs::write(
        scripts.join("tests/wrong.toml"),
        "[[case]]\nexpected = []\n",
    )
    .unwrap();
    let (code, _, err) = rules_test(&["--dir", &s]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("wrong.toml") && err.contains("expected"),
        "{err}"
    );
}
