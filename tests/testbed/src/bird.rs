//! A BIRD 2 process in a namespace (Debian's `bird2`), with its own config, control socket and
//! pid file; killed when dropped. The announcement and scale-out tests run one per balancer and
//! one on the router.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::Netns;

pub struct Bird {
    child: Option<Child>,
    ns: String,
    conf: PathBuf,
    pub socket: PathBuf,
}

impl Bird {
    /// Writes `conf` to `dir/name.conf` and starts BIRD on it in `ns`.
    pub fn start(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Bird {
        let conf_path = dir.join(format!("{name}.conf"));
        std::fs::write(&conf_path, conf).unwrap();
        let mut bird = Bird {
            child: None,
            ns: ns.name().to_string(),
            conf: conf_path,
            socket: dir.join(format!("{name}.ctl")),
        };
        bird.spawn(ns);
        bird
    }

    /// (Re)starts the process, and waits for its control socket.
    pub fn spawn(&mut self, ns: &Netns) {
        let _ = std::fs::remove_file(&self.socket);
        let mut child = ns
            .command_net_only("bird")
            .arg("-f")
            .arg("-c")
            .arg(&self.conf)
            .arg("-s")
            .arg(&self.socket)
            .arg("-P")
            .arg(self.socket.with_extension("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start bird (Debian package bird2; cargo xtask setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "bird in {} did not start",
                self.ns
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "bird in {} exited: is {} valid?",
            self.ns,
            self.conf.display()
        );
        self.child = Some(child);
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// BGP timers short enough for tests: sessions come up in about a second and a silent peer is
/// dropped after 6 s.
pub const BIRD_TEST_TIMERS: &str = "connect delay time 1; connect retry time 1; \
                                    error wait time 1, 2; hold time 6; keepalive time 2;";

/// The IPv4 routes BIRD installed in `ns`'s kernel table.
pub fn bird_routes(ns: &Netns) -> String {
    ns.ip(&["-4", "route", "show", "proto", "bird"])
}
