//! Connectivity matrices: ICE sessions between peers behind NAT profiles, cell by cell.

pub mod model;
