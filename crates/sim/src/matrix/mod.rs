//! Connectivity matrices: ICE sessions between peers behind NAT profiles, cell by cell.

pub mod compare;
pub mod merge;
pub mod model;
pub mod report;
