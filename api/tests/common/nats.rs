//! nats-server with JetStream on loopback ports, for the replication tests.
//!
//! The server comes from `SURGE_NATS_SERVER`, else PATH (`.ci/setup` installs it).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TempDir, find_program, free_port, poll};

/// How long a nats-server may take to listen.
const LISTEN_DEADLINE: Duration = Duration::from_secs(20);

fn nats_binary() -> PathBuf {
    find_program("SURGE_NATS_SERVER", &["nats-server"])
        .expect("nats-server not found: run `bash .ci/setup` or set SURGE_NATS_SERVER")
}

/// A nats-server with JetStream on a loopback port, stopped on drop.
pub struct Nats {
    child: Child,
    port: u16,
}

impl Nats {
    /// A lone server on a free port, its store under `store`.
    pub fn start(store: &TempDir) -> Nats {
        Nats::start_on(free_port(), store)
    }

    /// A lone server on `port` (one a test chose before, e.g. to start it late).
    pub fn start_on(port: u16, store: &TempDir) -> Nats {
        let mut command = Command::new(nats_binary());
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path().join("jetstream"));
        Nats::spawn(command, port)
    }

    /// One node of a JetStream cluster named `surge` whose routes are `routes`.
    pub fn start_clustered(
        name: &str,
        port: u16,
        cluster_port: u16,
        routes: &str,
        store: &TempDir,
    ) -> Nats {
        let mut command = Command::new(nats_binary());
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                name,
            ])
            .args(["--cluster_name", "surge", "--cluster"])
            .arg(format!("nats://127.0.0.1:{cluster_port}"))
            .args(["--routes", routes, "-sd"])
            .arg(store.path().join(name));
        Nats::spawn(command, port)
    }

    /// Start `command` and wait until its client port listens.
    fn spawn(mut command: Command, port: u16) -> Nats {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning nats-server (see .ci/setup)");
        let nats = Nats { child, port };
        let listening = poll(LISTEN_DEADLINE, || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(listening.is_some(), "nats-server did not listen on {port}");
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
