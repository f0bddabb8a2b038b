//! `surge-loadtest`: see `surge-loadtest --help`.

use clap::Parser;
use surge_loadtest::{Cli, run_to_exit_code, stop};

fn main() {
    // First, before any thread: the signal mask is inherited by every thread.
    // SIGINT, SIGTERM, SIGHUP: stop our children, remove our temporary dirs, exit
    // 128 + signal.
    if let Err(e) = stop::handle_signals() {
        eprintln!("surge-loadtest: {e:#}");
        stop::exit(2);
    }
    let cli = Cli::parse();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    // Every drill stops by itself: past --time-max the watchdog stops our children,
    // removes our temporary dirs and exits 3, whatever the drill is waiting for.
    let time_max = cli.common.time_max;
    std::thread::spawn(move || {
        std::thread::sleep(time_max);
        stop::stop_and_exit(3, &format!("--time-max {time_max:?} reached"));
    });
    let code = run_to_exit_code(&cli, command_line, &mut std::io::stdout());
    stop::exit(code)
}
