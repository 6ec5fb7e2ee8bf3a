//! README's commands work as written: every command of its `sh` blocks (but Quick start's two,
//! which are this suite and the developer stack) runs against a live `atlas serve` with the
//! demo fleet, as a user pastes it after `scripts/dev`.

use std::process::Command;

use atlas_testkit::TestDb;

use crate::support::{ADMIN, Serve, atlas_for};

/// The repository's root (README's commands run there, as `./target/debug/atlas`).
fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The commands of README's `sh` blocks: one a line, comments and Quick start's scripts left
/// out.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if in_sh && !trimmed.is_empty() && !trimmed.starts_with('#') {
            let command = trimmed
                .split(" # ")
                .next()
                .unwrap_or(trimmed)
                .trim()
                .to_owned();
            if !command.starts_with("./scripts/") {
                commands.push(command);
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_command_works_against_the_demo_fleet() {
    let db = TestDb::new().await;
    let atlas = |args: &[&str]| {
        atlas_for(&db)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let out = atlas(&["demo", "--entities", "5", "--minutes", "30"]);
    assert!(
        out.status.success(),
        "atlas demo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let serve = Serve::start(
        &db.urls.database_url,
        &db.urls.replica_urls,
        &db.urls.redis_url,
    )
    .await;
    let out = atlas(&["key", "create", "--tenant", "acme", "--name", "readme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let commands = readme_commands();
    assert!(
        commands.iter().filter(|c| c.starts_with("curl ")).count() >= 10,
        "README's examples are gone: {commands:?}"
    );
    let binary_dir = std::path::Path::new(env!("CARGO_BIN_EXE_atlas"))
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    for command in &commands {
        // curl fails on a 4xx/5xx here, so a refused example fails the test.
        let script = format!(
            "curl() {{ command curl --fail-with-body --max-time 30 \"$@\"; }}\nset -euo pipefail\n{command}\n"
        );
        // The same environment as `atlas` gets, running bash instead.
        let env = atlas_for(&db);
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(root())
            .envs(env.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env("ATLAS_URL", &serve.base)
            .env("KEY", &key)
            .env("ATLAS_ADMIN_TOKEN", ADMIN)
            .env(
                "PATH",
                format!("{binary_dir}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .output()
            .unwrap_or_else(|e| panic!("bash: {e}"));
        assert!(
            out.status.success(),
            "README command failed: {command}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn readme_stands_alone_and_links_the_docs_it_names() {
    let readme = std::fs::read_to_string(root().join("README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    assert!(
        !readme.contains("../shared"),
        "README points outside the repository"
    );
    for doc in ["docs/design.md", "docs/architecture.md"] {
        assert!(
            readme.contains(&format!("]({doc})")),
            "README does not link {doc}"
        );
        let text = std::fs::read_to_string(root().join(doc)).unwrap_or_default();
        assert!(text.len() > 2000, "{doc} is missing or empty");
        assert!(
            !text.contains("../shared"),
            "{doc} points outside the repository"
        );
    }
}
