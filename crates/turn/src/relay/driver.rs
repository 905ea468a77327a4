//! Drivers (to come).
