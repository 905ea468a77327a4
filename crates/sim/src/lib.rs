//! natscope simulator library: scenarios, packet fabric, runners, reports.
#![deny(unsafe_code)]

pub mod fabric;
pub mod matrix;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod topology;
