#![no_std]
// This file exists so `sg-daemon` can name this crate as a build dependency (aya-build
// compiles the `sg-ebpf` binary for the BPF target); the programs live in `main.rs`.
