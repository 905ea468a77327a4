//! Connectivity matrices: ICE sessions between peers behind NAT profiles, cell by cell,
//! judged against the RFC 4787 oracle (`nat::oracle`).
//!
//! - [`spec`]: matrix files, profiles, each cell's scenario and expectation;
//! - [`run`]: cells in parallel, each in its own fabric;
//! - [`session`]: one ICE session between two hosts of a running scenario (cells and
//!   scenario `[[ice]]` entries);
//! - [`model`]: the `matrix.json` contract;
//! - [`report`], [`term`]: Markdown, HTML heatmap, terminal grids;
//! - [`merge`], [`compare`]: shards joined; a fresh matrix against a baseline.

pub mod compare;
pub mod merge;
pub mod model;
pub mod report;
pub mod run;
pub mod session;
pub mod spec;
pub mod term;
