//! `rewrite`: load the dataplane, attach it to interfaces and edit the mapping table.

mod bounce_commands;
mod commands;
mod fleet_commands;
mod gate_commands;
mod report;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = rewrite_user::cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
