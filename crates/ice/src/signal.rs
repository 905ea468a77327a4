//! Signaling.
