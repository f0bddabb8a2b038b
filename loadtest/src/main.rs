//! `surge-loadtest`: see `surge-loadtest --help`.

use std::process::ExitCode;

use clap::Parser;
use surge_loadtest::{Cli, run_to_exit_code, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    // Every drill stops by itself: past --time-max the watchdog stops our children
    // and exits, whatever the drill is waiting for.
    let time_max = cli.common.time_max;
    std::thread::spawn(move || {
        std::thread::sleep(time_max);
        eprintln!("surge-loadtest: --time-max {time_max:?} reached; stopping");
        server::kill_all_children();
        std::process::exit(3);
    });
    ExitCode::from(run_to_exit_code(&cli, command_line, &mut std::io::stdout()))
}
