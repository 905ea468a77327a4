//! TURN server core (RFC 8656): allocations, permissions, channels. Under construction.
