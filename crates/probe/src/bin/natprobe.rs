//! `natprobe`: how does the NAT in front of me behave, in RFC 4787 terms?

fn main() -> std::process::ExitCode {
    probe::cli::main(std::env::args_os())
}
