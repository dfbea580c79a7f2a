//! sg host agent library.
//!
//! Pure core (no I/O): [`compile`] (rules -> map entries), [`desired`] (the desired-state
//! document and its validation), [`plan`] (what an apply changes).
//! Adapters: [`dataplane`] (pinned eBPF objects), [`state`] (state file and lock),
//! [`netns`] (network namespaces), and [`apply`] which drives them in a safe order.
pub mod agent;
pub mod apply;
pub mod cli;
pub mod compile;
pub mod dataplane;
pub mod desired;
pub mod events;
pub mod flows;
pub mod geo;
pub mod metrics;
pub mod netns;
pub mod plan;
pub mod state;
pub mod testrun;
