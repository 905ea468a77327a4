//! icepeer: connect two machines with ICE using copy-paste signaling (see `ice::cli`).

fn main() -> std::process::ExitCode {
    ice::cli::main(std::env::args_os())
}
