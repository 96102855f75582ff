//! The real `understudy` binary running in a namespace, stopped on drop. Readiness is the
//! daemon's own sd_notify `READY=1`, sent to a socket the harness owns (`NOTIFY_SOCKET`), as
//! systemd would see it: no test matches a log line.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use crate::Netns;

/// An sd_notify socket: every datagram the daemon sends, in order. Removed on drop.
pub struct NotifySocket {
    pub path: PathBuf,
    messages: Arc<Mutex<mpsc::Receiver<String>>>,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "understudy-notify-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        NotifySocket {
            path,
            messages: Arc::new(Mutex::new(rx)),
        }
    }

    /// The next message, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.messages.lock().unwrap().recv_timeout(timeout).ok()
    }

    /// Waits (up to `timeout`) for a message with `READY=1`.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.next(left) {
                Some(m) if m.lines().any(|l| l == "READY=1") => return true,
                Some(_) => {}
                None => return false,
            }
        }
        false
    }
}

impl Default for NotifySocket {
    fn default() -> Self {
        NotifySocket::new()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// Where the daemon's sd_notify messages arrive; the first `READY=1` was taken by start.
    notify: Option<NotifySocket>,
    /// The instance's pinned state (named after the namespace, see `Topology::dataplane_toml`),
    /// removed when a failed test drops the daemon after killing it.
    pins: std::path::PathBuf,
    /// Dropped with SIGTERM (a clean stop that detaches XDP), not SIGKILL.
    graceful: bool,
}

/// How to start the daemon, beyond its binary and config.
#[derive(Debug, Default)]
pub struct Launch<'a> {
    /// A program and its arguments to run the daemon through (such as `setpriv`).
    pub wrapper: &'a [String],
    pub env: &'a [(&'a str, &'a str)],
    /// Print each line of its output as `  understudy | LINE`, as it comes (the demo).
    pub relay: bool,
    /// Stop it with SIGTERM on drop, as a user's Ctrl-C would, instead of killing it.
    pub graceful: bool,
    /// Its pinned state, removed if it is killed; `/sys/fs/bpf/understudy/<namespace>` if unset.
    pub pins: Option<PathBuf>,
}

impl Daemon {
    /// Starts `binary run --config <config>` in `ns` and waits until it reports it is running.
    /// Panics with its output if it exits or stays silent for 30 s ([`crate::scaled`]).
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
        let how = Launch {
            wrapper,
            env,
            ..Launch::default()
        };
        Daemon::launch(ns, binary, config, how).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `binary run --config <config>` in `ns` as `how` says, and waits until it reports
    /// it is ready. An error carries its exit status and output.
    pub fn launch(ns: &Netns, binary: &Path, config: &Path, how: Launch) -> Result<Daemon, String> {
        let binary = binary.to_str().ok_or("the binary's path is not UTF-8")?;
        let mut command = match how.wrapper.split_first() {
            None => ns.command_net_only(binary),
            Some((program, args)) => {
                let mut c = ns.command_net_only(program);
                c.args(args).arg(binary);
                c
            }
        };
        unblock_stop_signals(&mut command);
        let notify = NotifySocket::new();
        let mut child = command
            .args(["run", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env("NOTIFY_SOCKET", &notify.path)
            .envs(how.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {binary}: {e}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let relay = how.relay;
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if relay {
                        println!("  understudy | {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut d = Daemon {
            child: Some(child),
            log,
            notify: Some(notify),
            pins: how
                .pins
                .unwrap_or_else(|| Path::new("/sys/fs/bpf/understudy").join(ns.name())),
            graceful: how.graceful,
        };
        let ready_within = crate::scaled(Duration::from_secs(30));
        if !d.notify().wait_ready(ready_within) {
            let status = d.child.as_mut().unwrap().try_wait().ok().flatten();
            return Err(format!(
                "understudy did not report it was ready within {ready_within:?} (exit: {status:?}); its output:\n{}",
                d.output()
            ));
        }
        Ok(d)
    }

    /// The daemon's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Waits up to `timeout` for a line of the daemon's output containing `text`; panics with
    /// the output if none comes.
    pub fn wait_for_line(&self, text: &str, timeout: Duration) {
        self.wait_for_another_line(text, 0, timeout);
    }

    /// Lines of the daemon's output so far that contain `text`.
    pub fn lines_with(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Waits up to `timeout` for a line containing `text` beyond the `seen` already there (see
    /// [`Daemon::lines_with`]): for a line the daemon prints more than once, such as one per
    /// reload, `wait_for_line` would find an old one.
    pub fn wait_for_another_line(&self, text: &str, seen: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.lines_with(text) <= seen {
            assert!(
                std::time::Instant::now() < deadline,
                "no line with {text:?} beyond the {seen} before, within {timeout:?}; the daemon's output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the daemon printed so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and returns whether it exited successfully within 10 s.
    pub fn stop(self) -> bool {
        self.stop_keeping_notify().0
    }

    /// As [`Daemon::stop`], handing back the notify socket for what came after.
    pub fn stop_keeping_notify(mut self) -> (bool, NotifySocket) {
        let ok = self.terminate();
        (ok, self.notify.take().expect("the notify socket"))
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it. Its pinned state stays for a
    /// successor to adopt.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's sd_notify messages after its first `READY=1`.
    pub fn notify(&self) -> &NotifySocket {
        self.notify.as_ref().expect("the notify socket")
    }

    fn terminate(&mut self) -> bool {
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

/// The child must not inherit blocked SIGINT/SIGTERM (the demo blocks them to `sigwait`): the
/// daemon stops cleanly on SIGTERM.
pub fn unblock_stop_signals(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.graceful && self.child.is_some() {
            self.terminate();
            return;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // Killed, it left its pins (as a crashed daemon should): a test must not.
            let _ = std::fs::remove_dir_all(&self.pins);
        }
    }
}
