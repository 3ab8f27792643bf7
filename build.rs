//! Records the git commit the binary is built from (`trimtab --version`): `TRIMTAB_GIT_COMMIT`
//! from the environment if set (a Docker build without `.git`), else `git rev-parse`, else
//! `unknown`. A checkout with uncommitted changes is marked `-dirty`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TRIMTAB_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed=.git/{head}");
    }
    let commit = std::env::var("TRIMTAB_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let c = git(&["rev-parse", "--short=12", "HEAD"])?;
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            Some(if dirty { format!("{c}-dirty") } else { c })
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TRIMTAB_GIT_COMMIT={commit}");
}
