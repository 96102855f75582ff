//! A named network namespace with a guard that deletes it.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command and returns its output, whatever its status.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (is it installed? `cargo xtask setup`)")
        })
}

/// Runs a command and panics with its stderr unless it succeeds.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    if !out.status.success() {
        panic!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with every interface in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `us-<role>-<pid>-<n>`, unique within this machine's live processes.
    pub fn new(role: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("us-{role}-{}-{n}", std::process::id());
        run_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// A veth pair: `dev` here, `peer_dev` in `peer`, both still down.
    pub fn veth_to(&self, dev: &str, peer: &Netns, peer_dev: &str) {
        self.ip(&[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            peer_dev,
            "netns",
            peer.name(),
        ]);
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A command that joins only this network namespace (`nsenter --net`). Unlike `ip netns
    /// exec` it keeps the host's mounts, so `/sys/fs/bpf` and its pins stay visible: daemons that
    /// pin their state run this way.
    pub fn command_net_only(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg(program);
        c
    }

    /// Starts a long-running process inside the namespace.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} in {}: {e}", self.name))
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has joined this namespace. Sockets created there stay in the
    /// namespace wherever they are used later; threads spawned by `f` inherit it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Netns {
    /// Starts a background thread that has joined this namespace.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its veth ends, and with them their peers elsewhere.
        let out = run("ip", &["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: could not delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

impl Netns {
    /// Deletes namespaces this crate made for processes that no longer exist (a run killed with
    /// SIGKILL cannot clean up after itself).
    pub fn remove_stale() {
        // Pinned state of test daemons whose process is gone (named like their namespace).
        if let Ok(dirs) = std::fs::read_dir("/sys/fs/bpf/understudy") {
            for d in dirs.filter_map(Result::ok) {
                let name = d.file_name().to_string_lossy().into_owned();
                let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
                if name.starts_with("us-")
                    && pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
                {
                    eprintln!("removing stale pins {name}");
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
        let list = run("ip", &["netns", "list"]);
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let mut parts = name.rsplitn(3, '-');
            let (_n, pid) = (parts.next(), parts.next());
            let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if name.starts_with("us-") && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing stale namespace {name}");
                run("ip", &["netns", "del", name]);
            }
        }
    }
}
