//! RFC 4787 / RFC 5382 NAT model. Under construction.
#![deny(unsafe_code)]
