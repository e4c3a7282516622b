//! `rewrite`: load the dataplane, attach it to interfaces and edit the mapping table.

mod commands;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = rewrite_user::cli::Cli::parse();
    let verbose = cli.verbose;
    match commands::run(cli) {
        Ok(commands::Status::Done) => std::process::ExitCode::SUCCESS,
        Ok(commands::Status::ChangesPending) => std::process::ExitCode::from(2),
        Err(error) => {
            eprintln!("error: {error:#}");
            if verbose {
                print_details(&error);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// What `--verbose` adds to an error: the verifier's log of a refused program.
fn print_details(error: &anyhow::Error) {
    for cause in error.chain() {
        if let Some(rewrite_user::Error::VerifierRefused { program, log, .. }) = cause.downcast_ref() {
            eprintln!("the verifier's log for {program}:\n{log}");
        }
    }
}
