//! TURN client (RFC 8656): sans-IO core and tokio driver. Under construction.
