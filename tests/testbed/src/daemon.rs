//! The real `understudy` binary running in a namespace, stopped on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use crate::Netns;

pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// The instance's pinned state (named after the namespace, see `Topology::dataplane_toml`),
    /// removed when a failed test drops the daemon after killing it.
    pins: std::path::PathBuf,
}

impl Daemon {
    /// Starts `binary run --config <config>` in `ns` and waits until it reports it is running.
    /// Panics with its output if it exits or stays silent for 30 s.
    pub fn start(ns: &Netns, binary: &Path, config: &Path) -> Daemon {
        Daemon::start_with_env(ns, binary, config, &[])
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(
        ns: &Netns,
        binary: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::start_wrapped(ns, &[], binary, config, env)
    }

    /// As [`Daemon::start_with_env`], run through `wrapper` (a program and its arguments, such
    /// as `setpriv` with a capability set), which gets the daemon's command line after it.
    pub fn start_wrapped(
        ns: &Netns,
        wrapper: &[String],
        binary: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let binary = binary.to_str().expect("utf-8 path");
        let mut command = match wrapper.split_first() {
            None => ns.command_net_only(binary),
            Some((program, args)) => {
                let mut c = ns.command_net_only(program);
                c.args(args).arg(binary);
                c
            }
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start understudy");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("understudy is running") {
                        let _ = tx.send(());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut d = Daemon {
            child: Some(child),
            log,
            pins: Path::new("/sys/fs/bpf/understudy").join(ns.name()),
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = d.child.as_mut().unwrap().try_wait().ok().flatten();
            panic!(
                "understudy did not start (exit: {status:?}); its output:\n{}",
                d.output()
            );
        }
        d
    }

    /// The daemon's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Everything the daemon printed so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and returns whether it exited successfully within 10 s.
    pub fn stop(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..500 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // Killed, it left its pins (as a crashed daemon should): a test must not.
            let _ = std::fs::remove_dir_all(&self.pins);
        }
    }
}
