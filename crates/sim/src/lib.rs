//! natscope simulator library: scenarios, packet fabric, runners, reports.
#![deny(unsafe_code)]

pub mod fabric;
pub mod topology;
