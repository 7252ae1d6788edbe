//! The build's identity, `TALLY_BUILD_ID`: the sha256 of what the binary is made of — the
//! source (`Cargo.toml`, `Cargo.lock`, this file, every `*.rs` file under `src/` and the
//! files `src/` includes), each with its path, the toolchain (`rustc -vV`) and the build
//! settings (profile, optimisation, debug, rustflags). Two builds of one commit share it,
//! for any architecture or packaging (a multi-arch image, a stripped binary), and any
//! change of the code, its dependencies or how it is compiled changes it. Every build says
//! version 0.1.0 until a release, so shards and their merge compare this instead
//! (`src/shard.rs`, `this_build`).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Files `src/` includes at compile time (`include_str!`), relative to the package.
const INCLUDED: [&str; 1] = ["fixtures/pricebook.toml"];

/// The build settings that change the code generated from one source.
const SETTINGS: [&str; 4] = ["PROFILE", "OPT_LEVEL", "DEBUG", "CARGO_ENCODED_RUSTFLAGS"];

/// Every `*.rs` file under `dir`, in path order; links are not followed (an editor's
/// backup or a link loop must not change or break the identity).
fn sources_under(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.expect("a listed entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let Ok(kind) = std::fs::symlink_metadata(&path).map(|m| m.file_type()) else {
            continue;
        };
        if kind.is_dir() {
            sources_under(&path, files);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// A file's path under the package, `/`-separated whatever the platform.
fn package_path(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).expect("a file of the package");
    let parts: Vec<String> = (relative.components())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut files: Vec<PathBuf> = ["Cargo.toml", "Cargo.lock", "build.rs"]
        .iter()
        .chain(INCLUDED.iter())
        .map(|name| root.join(name))
        .collect();
    sources_under(&root.join("src"), &mut files);
    let mut hash = Sha256::new();
    // Each part framed by its name and length: moving bytes between parts changes it.
    let mut part = |name: &str, bytes: &[u8]| {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        part(&package_path(&root, file), &bytes);
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let toolchain = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs")
        .stdout;
    part("rustc -vV", &toolchain);
    for setting in SETTINGS {
        part(
            setting,
            std::env::var(setting).unwrap_or_default().as_bytes(),
        );
        println!("cargo:rerun-if-env-changed={setting}");
    }
    // A file added under src/.
    println!("cargo:rerun-if-changed={}", root.join("src").display());
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=TALLY_BUILD_ID={hex}");
}
