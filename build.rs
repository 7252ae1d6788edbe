//! The build's identity, `TALLY_BUILD_ID`: the sha256 of the source the binary is made of
//! (`Cargo.toml`, `Cargo.lock` and every file under `src/`, each with its path). Two builds
//! of one source share it, for any architecture or packaging (a multi-arch image, a
//! stripped binary); any change of the code or of its dependencies changes it. Every build
//! says version 0.1.0 until a release, so shards and their merge compare this instead
//! (`src/shard.rs`, `this_build`).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Every file under `dir`, in path order.
fn files_under(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.expect("a listed entry").path())
        .collect();
    entries.sort();
    for path in entries {
        match path.is_dir() {
            true => files_under(&path, files),
            false => files.push(path),
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut files = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    files_under(&root.join("src"), &mut files);
    let mut hash = Sha256::new();
    for file in &files {
        let name = file.strip_prefix(&root).expect("a file of the package");
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Each file framed by its path and length: moving bytes between files changes it.
        hash.update(name.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // A file added under src/.
    println!("cargo:rerun-if-changed={}", root.join("src").display());
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=TALLY_BUILD_ID={hex}");
}
