use which::which;

/// Rebuild when bpf-linker changes (aya-template's trick): the bin target is linked by it.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
