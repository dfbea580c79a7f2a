//! Types shared by the kernel programs (`sg-ebpf`) and userspace (`sg-daemon`).
//!
//! Without features this crate is `no_std` and holds only the `#[repr(C)]` map keys and
//! values ([`abi`]). The `user` feature adds the rule model ([`model`]) and the pure
//! reference classifier ([`reference`]) that every kernel verdict is tested against.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod abi;

#[cfg(feature = "user")]
pub mod conntrack;
#[cfg(feature = "user")]
pub mod model;
#[cfg(feature = "user")]
pub mod reference;
