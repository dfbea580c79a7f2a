//! Compiles `sg-ebpf` for the BPF target and leaves the object in OUT_DIR, where
//! `src/loader.rs` embeds it. Works on the stable toolchain: RUSTC_BOOTSTRAP lets
//! aya-build pass `-Z build-std=core`, and `.tools/bin` (from scripts/bootstrap.sh)
//! supplies bpf-linker.
use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest.parent().expect("workspace root").to_path_buf();
    let tools_bin = workspace.join(".tools/bin");
    if tools_bin.is_dir() {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![tools_bin];
        paths.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", env::join_paths(paths)?) };
    }
    if env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY: as above.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    // The nested cargo's progress lines would each surface as a cargo warning; errors
    // still come through its JSON messages.
    // SAFETY: as above.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let ebpf_dir = workspace.join("sg-ebpf");
    let toolchain = env::var("SG_EBPF_TOOLCHAIN").unwrap_or_else(|_| "1.99.0".to_string());
    println!("cargo:rerun-if-env-changed=SG_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-changed={}", workspace.join("sg-common/src").display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sg-ebpf",
            root_dir: ebpf_dir.to_str().expect("utf-8 path"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
