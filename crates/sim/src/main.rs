//! `sim`: under construction.
fn main() {}
