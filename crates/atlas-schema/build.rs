//! Embeds every `.sql` file of `migrations/`, `analytics/` and `functions/`, found by listing
//! the folders: a new migration is a new file, with no list to keep in step with it.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = String::new();
    for (constant, folder) in [
        ("MIGRATIONS", "migrations"),
        ("ANALYTICS_MIGRATIONS", "analytics"),
    ] {
        let _ = writeln!(out, "const {constant}_FILES: &[Migration] = &[");
        for name in sql_files(&root.join(folder)) {
            let version: i32 = name
                .split('_')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{folder}/{name}: a migration's name starts with its number, e.g. 0021_…"
                    )
                });
            let _ = writeln!(
                out,
                "    Migration {{ version: {version}, name: {name:?}, sql: include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/{folder}/{name}\")) }},"
            );
        }
        let _ = writeln!(out, "];");
    }
    let _ = writeln!(out, "const FUNCTION_FILES: &[Functions] = &[");
    for name in sql_files(&root.join("functions")) {
        let _ = writeln!(
            out,
            "    Functions {{ name: {name:?}, sql: include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/functions/{name}\")) }},"
        );
    }
    let _ = writeln!(out, "];");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|e| panic!("OUT_DIR: {e}")))
        .join("embedded.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
    for folder in ["migrations", "analytics", "functions"] {
        println!("cargo:rerun-if-changed={folder}");
    }
}

/// The `.sql` files of a folder, sorted by name (their order of application).
fn sql_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    names
}
