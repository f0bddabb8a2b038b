//! `surge-loadtest`: see `surge-loadtest --help`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use surge_loadtest::{Cli, run, server, verdict, write_outputs};

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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("surge-loadtest: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(&cli, command_line));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("surge-loadtest: {e:#}");
            server::kill_all_children();
            return ExitCode::from(2);
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    print!("{}", report.table());
    if let Err(e) = write_outputs(&cli.common, &report) {
        eprintln!("surge-loadtest: {e:#}");
        return ExitCode::from(2);
    }
    match verdict(&report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failures) => {
            eprintln!("surge-loadtest: AUDIT FAILED");
            for f in failures.iter().take(20) {
                eprintln!("  {f}");
            }
            ExitCode::from(1)
        }
    }
}
