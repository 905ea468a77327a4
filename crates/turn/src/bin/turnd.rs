//! `turnd`: STUN server with full RFC 5780 NAT behaviour discovery support.

fn main() -> std::process::ExitCode {
    turn::cli::main(std::env::args_os())
}
