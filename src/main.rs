//! The `infergate` binary: parse flags, hand over to [`infergate::cli::run`].

fn main() -> std::process::ExitCode {
    infergate::cli::run(std::env::args_os())
}
