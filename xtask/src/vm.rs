//! `cargo xtask vm`: boots a Debian kernel package under QEMU and runs one command inside, on this
//! host's own files.
//!
//! - **Kernels** come from Debian's package archive, never from the host's /boot: the
//!   `linux-image-amd64` of bookworm (6.1) or of bookworm-backports (its newest, 6.12 today), found
//!   with a private apt state under `target/vm/apt/<suite>` (the host's sources stay untouched),
//!   fetched with `apt-get download`, unpacked with `dpkg -x` into `target/vm/kernels/<release>`
//!   and indexed with `depmod -b`.
//! - **Root file system**: the host's `/`, shared read-only over 9p (`-virtfs ... readonly=on`),
//!   under a tmpfs overlay inside the guest, so tests write freely and nothing reaches the host.
//!   Fresh proc, sys, dev, bpffs, /run and /tmp are mounted over it (a checkout or target
//!   directory under /tmp is kept visible over the fresh one); the guest sees the same paths,
//!   so the host-built test binaries and daemon run unchanged. A second, writable 9p share carries
//!   the script in and the exit status out.
//! - **Init**: a busybox-static `/init` in a small initramfs built here. It loads the modules the
//!   9p root needs from the unpacked package (Debian builds them as modules), mounts, and switches
//!   root. We chose this over virtme-ng: virtme-ng wants the kernel's modules installed under
//!   /lib/modules or a kernel build tree, and adds a Python tool to CI, where this is 60 lines of
//!   shell and the same `-virtfs` mechanism.
//! - **Acceleration**: KVM when `/dev/kvm` opens and a probe guest boots under it within 30 s (the
//!   verdict is kept until the host reboots), TCG (`-cpu max`) otherwise; said in one line.
//! - **Failures** print the guest's console as it runs (serial on stdout, also saved under
//!   `target/vm/runs/`), so a CI log shows the kernel messages and the failing test's output.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{cmd, target_dir};

/// A kernel `--kernel` can name, and the Debian suite whose `linux-image-amd64` provides it.
const KERNELS: &[(&str, &str)] = &[("6.1", "bookworm"), ("backports", "bookworm-backports")];

/// Modules the 9p-over-virtio root and its overlay need on Debian's kernels (their dependencies
/// are added from `modules.dep`).
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// `UNDERSTUDY_GUEST_SLOWDOWN` in a TCG guest (see `understudy_testbed::slowdown`).
const TCG_SLOWDOWN: u32 = 10;

/// Environment passed from the host to the guest's command.
const PASSED_ENV: &[&str] = &[
    "CI",
    "RUST_BACKTRACE",
    "RUST_LOG",
    "CARGO_TARGET_DIR",
    "UNDERSTUDY_GUEST_SLOWDOWN",
    "TERM",
];

#[derive(Args)]
pub struct Options {
    /// The guest kernel: `6.1` (Debian 12) or `backports` (Debian 12 backports' newest, 6.12).
    #[arg(long, default_value = "6.1")]
    pub kernel: String,
    /// Give up on the guest after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// Run the kernel matrix (what `cargo xtask test` runs on 6.1) instead of a command.
    #[arg(long)]
    pub matrix: bool,
    /// The command to run inside, through `sh -c`, in the current directory.
    #[arg(last = true, required_unless_present = "matrix")]
    pub command: Vec<String>,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    if o.matrix {
        return matrix(&o.kernel);
    }
    let kernel = Kernel::get(&o.kernel)?;
    let cwd = std::env::current_dir()?;
    kernel.run(&o.command.join(" "), &cwd, Duration::from_secs(o.timeout))
}

/// The kernel matrix's suites: a name, and the guest command after the executables' paths are
/// filled in. In-kernel tests (`test_run` on crafted packets), the bench programs verified and
/// checked once per packet class, a daemon smoke (attach to a veth pair made in the guest, pin,
/// kill -9, adopt, clean stop: `e2e_reload`'s restart test), and the NAT end-to-end test.
const MATRIX_TESTS: &[(&str, &str)] = &[
    ("xdp_test_run", ""),
    ("xdp_failover", ""),
    ("xdp_fixtures", ""),
    ("xdp_edge", ""),
    ("xdp_forwarding", ""),
    (
        "e2e_reload",
        "after_kill_9_the_pinned_program_serves_and_the_successor_adopts_it",
    ),
    ("e2e_nat", ""),
];

/// Runs the kernel matrix on `kernel` (`cargo xtask test` runs it on 6.1): builds the test and
/// bench executables on the host, boots the guest once, runs every suite (none is skipped: a
/// suite that cannot run fails), and fails naming the suites that failed.
pub fn matrix(kernel: &str) -> anyhow::Result<()> {
    let kernel = Kernel::get(kernel)?;
    // First, since it builds the package's binary with the bench programs too; the tests' build
    // then puts the production object back. The test profile, whose dependencies are built
    // already: `cargo bench` would build every dev-dependency again in release with fat LTO.
    let bench = executables(
        &["test", "-p", "lb-userspace", "--bench", "xdp", "--no-run"],
        &[("UNDERSTUDY_BENCH_PROGRAMS", "1")],
    )?;
    let mut build = vec!["test", "-p", "lb-userspace", "--no-run"];
    for (name, _) in MATRIX_TESTS {
        build.extend(["--test", name]);
    }
    let tests = executables(&build, &[])?;
    let mut script = String::from("failed=\"\"\n");
    let mut suite = |name: &str, line: String| {
        script.push_str(&format!(
            "echo \"=== matrix: {name} on $(uname -r)\"\n\
             if {line}; then echo \"=== matrix: {name} passed\"; \
             else echo \"=== matrix: {name} FAILED\"; failed=\"$failed {name}\"; fi\n"
        ));
    };
    for (name, filter) in MATRIX_TESTS {
        let exe = tests
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("cargo built no executable for {name}"))?;
        suite(name, format!("{} {filter}", exe.1.display()));
    }
    let (_, xdp) = bench
        .iter()
        .find(|(n, _)| n == "xdp")
        .context("cargo built no xdp bench")?;
    suite(
        "bench programs (xdp, checked once per class)",
        format!("UNDERSTUDY_BENCH_CHECK=1 {} --bench", xdp.display()),
    );
    script.push_str(
        "if [ -n \"$failed\" ]; then echo \"=== matrix: failed:$failed\"; exit 1; fi\n\
         echo \"=== matrix: every suite passed on $(uname -r)\"\n",
    );
    let path = vm_dir().join("matrix.sh");
    std::fs::write(&path, script)?;
    println!("vm: kernel matrix on {}", kernel.release);
    let started = Instant::now();
    let result = kernel.run(
        &format!("sh {}", path.display()),
        &crate::util::root(),
        Duration::from_secs(45 * 60),
    );
    println!(
        "vm: kernel matrix on {} took {} s",
        kernel.release,
        started.elapsed().as_secs()
    );
    result
}

/// Builds with `cargo <args> --message-format=json` and returns each executable's target name
/// and path.
fn executables(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    println!("+ cargo {}", args.join(" "));
    let out = Command::new("cargo")
        .args(args)
        .arg("--message-format=json")
        .envs(env.iter().copied())
        .current_dir(crate::util::root())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && let Some(exe) = v["executable"].as_str()
            && let Some(name) = v["target"]["name"].as_str()
        {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(found)
}

/// An unpacked Debian kernel with its initramfs, ready to boot.
pub struct Kernel {
    /// `uname -r` inside the guest.
    pub release: String,
    dir: PathBuf,
    initrd: PathBuf,
}

impl Kernel {
    /// Fetches, unpacks and prepares the kernel `name` (see [`KERNELS`]); each step is skipped
    /// when its result is already there.
    pub fn get(name: &str) -> anyhow::Result<Kernel> {
        let Some(&(_, suite)) = KERNELS.iter().find(|(n, _)| *n == name) else {
            bail!(
                "no kernel named {name}; choose one of: {}",
                KERNELS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let package = kernel_package(suite)?;
        let release = package
            .strip_prefix("linux-image-")
            .context("unexpected kernel package name")?
            .to_string();
        let dir = vm_dir().join("kernels").join(&release);
        let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.exists() {
            let apt = apt_dir(suite);
            println!("vm: fetching {package} from {suite}");
            let debs = apt.join("debs");
            std::fs::create_dir_all(&debs)?;
            apt_get(suite, &debs, &["download", &package])?;
            let deb = std::fs::read_dir(&debs)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{package}_")))
                })
                .context("apt-get download left no .deb")?;
            let partial = vm_dir().join("kernels").join(format!("{release}.partial"));
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial)?;
            cmd("dpkg", &["-x", path_str(&deb)?, path_str(&partial)?])?;
            cmd("depmod", &["-b", path_str(&partial)?, &release])?;
            std::fs::rename(&partial, &dir)?;
            let _ = std::fs::remove_file(&deb);
        }
        // Named by its init script's hash: an initramfs built from an older script is not reused.
        let version = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::hash::DefaultHasher::new();
            INIT.hash(&mut h);
            h.finish()
        };
        let initrd = dir.join(format!("understudy-initrd-{version:016x}.cpio"));
        if !initrd.exists() {
            build_initramfs(&dir, &release, &initrd)?;
        }
        Ok(Kernel {
            release,
            dir,
            initrd,
        })
    }

    fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }

    /// Boots the kernel, runs `command` with `sh -c` in `cwd` as root, and fails unless it exits 0.
    pub fn run(&self, command: &str, cwd: &Path, timeout: Duration) -> anyhow::Result<()> {
        let accel = accel(self)?;
        let rc = self.boot(command, cwd, timeout, &accel, true)?;
        match rc {
            Some(0) => Ok(()),
            Some(rc) => bail!(
                "in the {} guest, `{command}` exited with {rc} (its output and the guest's \
                 console are above)",
                self.release
            ),
            None => bail!(
                "the {} guest ended without reporting an exit status: it crashed, hung or timed \
                 out (its console is above)",
                self.release
            ),
        }
    }

    /// One boot. Returns the command's exit status, or None when the guest never reported one.
    fn boot(
        &self,
        command: &str,
        cwd: &Path,
        timeout: Duration,
        accel: &Accel,
        echo: bool,
    ) -> anyhow::Result<Option<i32>> {
        let xfer = vm_dir().join("runs").join(format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&xfer)?;
        std::fs::write(xfer.join("run.sh"), guest_script(command, cwd, accel.kvm))?;
        let console_path = xfer.join("console.log");
        let mut console = std::fs::File::create(&console_path)?;
        let mut append = format!(
            "console=ttyS0 rdinit=/init panic=-1 loglevel=4 understudy.modules={}",
            self.modules().display()
        );
        let keep = kept_over_tmp(&[
            cwd.to_path_buf(),
            crate::util::root(),
            crate::util::target_dir(),
        ])?;
        if !keep.is_empty() {
            append.push_str(&format!(" understudy.keep={}", keep.join(":")));
        }
        let mut q = Command::new("qemu-system-x86_64");
        q.args(accel.args())
            .args([
                "-smp",
                "2",
                "-m",
                "4096",
                "-nographic",
                "-no-reboot",
                "-nic",
                "none",
            ])
            .arg("-kernel")
            .arg(
                self.dir
                    .join("boot")
                    .join(format!("vmlinuz-{}", self.release)),
            )
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &append])
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=xfer,security_model=none,multidevs=remap",
                xfer.display()
            ))
            .stdout(Stdio::piped());
        if !echo {
            // The KVM probe: its failure is summed up in one line by `accel`.
            q.stdin(Stdio::null()).stderr(Stdio::null());
        }
        let mut child = q.spawn().context("cannot start qemu-system-x86_64")?;
        let stdout = child.stdout.take().expect("piped");
        let copier = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = Vec::new();
            let out = std::io::stdout();
            while lines.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let _ = console.write_all(&line);
                if echo {
                    let _ = out.lock().write_all(&line);
                }
                line.clear();
            }
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                println!(
                    "vm: the guest did not finish within {} s; stopping it",
                    timeout.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = copier.join();
        let rc = std::fs::read_to_string(xfer.join("rc"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if echo {
            println!(
                "vm: guest {} ended (qemu {}); console saved at {}",
                self.release,
                status.map_or("killed".to_string(), |s| s.to_string()),
                console_path.display()
            );
        }
        Ok(rc)
    }
}

/// The script the guest's PID 1 runs after switching root: the command on the console as its
/// controlling terminal (so Ctrl-C reaches it in the interactive demo), then its exit status out
/// through the shared directory, then power off.
fn guest_script(command: &str, cwd: &Path, kvm: bool) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n",
    );
    s.push_str("export UNDERSTUDY_IN_GUEST=1\n");
    if !kvm && std::env::var_os("UNDERSTUDY_GUEST_SLOWDOWN").is_none() {
        // Under TCG the guest runs about 20x slower: waits for start-up scale by this.
        s.push_str(&format!(
            "export UNDERSTUDY_GUEST_SLOWDOWN={TCG_SLOWDOWN}\n"
        ));
    }
    for k in PASSED_ENV {
        // Colours only for a person at a terminal, not in a CI log.
        if *k == "TERM" && !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            continue;
        }
        if let Ok(v) = std::env::var(k) {
            s.push_str(&format!("export {k}={}\n", sh_quote(&v)));
        }
    }
    s.push_str(&format!(
        "ip link set lo up\n\
         ulimit -n 65536\n\
         cd {cwd}\n\
         echo \"vm: kernel $(uname -r) up; running: \"{cmd_q}\n\
         setsid -c -w /bin/sh -c {cmd_q} </dev/console >/dev/console 2>&1\n\
         echo $? > /run/vm/rc\n\
         sync\n\
         echo o > /proc/sysrq-trigger\n\
         sleep 30\n",
        cwd = sh_quote(&cwd.display().to_string()),
        cmd_q = sh_quote(command),
    ));
    s
}

/// Of `paths`, those under `/tmp` (resolved), outermost only: the guest mounts a fresh /tmp, and
/// a checkout or target directory there (CI clones may live in /tmp) must stay visible over it.
/// They travel on the kernel command line, so a path with whitespace or `:` is refused.
fn kept_over_tmp(paths: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut under: Vec<PathBuf> = paths
        .iter()
        .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
        .filter(|p| p.starts_with("/tmp") && p != Path::new("/tmp"))
        .collect();
    under.sort();
    under.dedup();
    let outer: Vec<&PathBuf> = under
        .iter()
        .filter(|p| !under.iter().any(|q| q != *p && p.starts_with(q)))
        .collect();
    outer
        .into_iter()
        .map(|p| {
            let s = p.display().to_string();
            if s.contains(|c: char| c.is_whitespace() || c == ':') {
                bail!(
                    "{s} is under /tmp, which the guest mounts afresh, and its name (a space or \
                     ':') cannot be passed to the guest: move the checkout or CARGO_TARGET_DIR"
                );
            }
            Ok(s)
        })
        .collect()
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The initramfs's `/init`: modules for the 9p root, the overlay, fresh kernel file systems, the
/// kernel's own modules at /lib/modules, then `switch_root` into the script.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
fail() { echo "vm-init: $*"; echo o > /proc/sysrq-trigger; sleep 30; }
mkdir -p /proc /sys /dev /lower /rw /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/modules/$m" || echo "vm-init: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower \
  || fail "cannot mount the host's root over 9p"
mount -t tmpfs -o size=80% tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || fail "cannot mount the overlay over the host's root"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
# Host directories under /tmp that the run needs (a checkout or a target dir there) are bound
# aside before the fresh /tmp hides them, and moved back onto it.
keep=$(sed -n 's/.*understudy.keep=\([^ ]*\).*/\1/p' /proc/cmdline)
n=0
for d in $(echo "$keep" | tr ':' ' '); do
  n=$((n + 1)); mkdir -p "/keep$n"
  mount --bind "/newroot$d" "/keep$n" || fail "cannot keep $d visible over the guest's /tmp"
done
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
n=0
for d in $(echo "$keep" | tr ':' ' '); do
  n=$((n + 1)); mkdir -p "/newroot$d" && mount --move "/keep$n" "/newroot$d"
done
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount -t bpf bpf /newroot/sys/fs/bpf
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
mkdir -p /newroot/run/vm /newroot/run/netns
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none xfer /newroot/run/vm \
  || fail "cannot mount the exchange directory"
rel=$(uname -r)
mods=$(sed -n 's/.*understudy.modules=\([^ ]*\).*/\1/p' /newroot/proc/cmdline)
mkdir -p "/newroot/lib/modules/$rel"
mount --bind "/newroot$mods" "/newroot/lib/modules/$rel"
exec switch_root /newroot /bin/sh /run/vm/run.sh
"#;

fn build_initramfs(kdir: &Path, release: &str, out: &Path) -> anyhow::Result<()> {
    println!("vm: building the initramfs for {release}");
    let mods = kdir.join("lib/modules").join(release);
    let dep = std::fs::read_to_string(mods.join("modules.dep"))
        .context("modules.dep is missing (depmod failed?)")?;
    let builtin = std::fs::read_to_string(mods.join("modules.builtin")).unwrap_or_default();
    let order = module_load_order(&dep, &builtin, ROOT_MODULES)?;
    let staging = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("bin"))?;
    std::fs::create_dir_all(staging.join("modules"))?;
    std::fs::copy("/bin/busybox", staging.join("bin/busybox"))
        .context("busybox-static is not installed")?;
    let mut names = Vec::new();
    for rel in &order {
        let src = mods.join(rel);
        let name = Path::new(rel)
            .file_name()
            .and_then(|n| n.to_str())
            .context("module path")?;
        // busybox's insmod cannot read compressed modules (Debian compresses them with xz
        // from 6.12): they go in decompressed.
        let (plain, decompress) = match name.strip_suffix(".xz") {
            Some(plain) => (plain, Some("xz")),
            None => (name, None),
        };
        let dst = staging.join("modules").join(plain);
        match decompress {
            Some(tool) => {
                let data = Command::new(tool).arg("-dc").arg(&src).output()?;
                if !data.status.success() {
                    bail!("{tool} -dc {} failed", src.display());
                }
                std::fs::write(&dst, data.stdout)?;
            }
            None => {
                std::fs::copy(&src, &dst)?;
            }
        }
        names.push(plain.to_string());
    }
    std::fs::write(staging.join("modules.order"), names.join("\n") + "\n")?;
    std::fs::write(staging.join("init"), INIT)?;
    std::fs::set_permissions(staging.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | /bin/busybox cpio -o -H newc > \"$0\" 2>/dev/null")
        .arg(out.with_extension("tmp"))
        .current_dir(&staging)
        .status()?;
    if !status.success() {
        bail!("building the initramfs with busybox cpio failed");
    }
    std::fs::rename(out.with_extension("tmp"), out)?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// The module files (relative to the modules directory) to load, dependencies first, for
/// `wanted` given `modules.dep`; built-in modules are left out.
fn module_load_order(dep: &str, builtin: &str, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let entries: Vec<(&str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((m.trim(), deps.split_whitespace().collect()))
        })
        .collect();
    let stem = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let mut order: Vec<String> = Vec::new();
    fn visit(
        path: &str,
        entries: &[(&str, Vec<&str>)],
        order: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        if order.iter().any(|p| p == path) {
            return Ok(());
        }
        let (_, deps) = entries
            .iter()
            .find(|(p, _)| *p == path)
            .with_context(|| format!("{path} is not in modules.dep"))?;
        // modules.dep lists the module needed last first: load in reverse.
        for d in deps.iter().rev() {
            visit(d, entries, order)?;
        }
        order.push(path.to_string());
        Ok(())
    }
    for w in wanted {
        if builtin.lines().any(|l| stem(l) == *w) {
            continue;
        }
        let (path, _) = entries
            .iter()
            .find(|(p, _)| stem(p) == *w)
            .with_context(|| format!("module {w} is neither built in nor in modules.dep"))?;
        visit(path, &entries, &mut order)?;
    }
    Ok(order)
}

/// How QEMU runs the guest.
struct Accel {
    kvm: bool,
}

impl Accel {
    fn args(&self) -> Vec<&'static str> {
        if self.kvm {
            vec!["-accel", "kvm", "-cpu", "host"]
        } else {
            vec!["-accel", "tcg", "-cpu", "max"]
        }
    }
}

/// KVM if a probe guest boots under it, else TCG. The verdict is kept per host boot, since a KVM
/// that fails may hang rather than refuse (seen on this project's CI machines).
fn accel(kernel: &Kernel) -> anyhow::Result<Accel> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = vm_dir().join("accel");
    let why = if let Ok(c) = std::fs::read_to_string(&cache)
        && let Some((id, verdict)) = c.split_once('\n')
        && id == boot_id.trim()
    {
        verdict.trim().to_string()
    } else if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        "tcg: /dev/kvm cannot be opened".to_string()
    } else {
        let probe = kernel.boot(
            "true",
            Path::new("/"),
            Duration::from_secs(30),
            &Accel { kvm: true },
            false,
        )?;
        if probe == Some(0) {
            "kvm".to_string()
        } else {
            "tcg: /dev/kvm is there but a guest did not boot under it within 30 s".to_string()
        }
    };
    std::fs::write(&cache, format!("{}\n{why}\n", boot_id.trim()))?;
    if why == "kvm" {
        println!("vm: acceleration: KVM");
        Ok(Accel { kvm: true })
    } else {
        println!(
            "vm: acceleration: none, software emulation (TCG, about 20x slower) — {}",
            why.trim_start_matches("tcg: ")
        );
        Ok(Accel { kvm: false })
    }
}

fn vm_dir() -> PathBuf {
    target_dir().join("vm")
}

fn apt_dir(suite: &str) -> PathBuf {
    vm_dir().join("apt").join(suite)
}

/// Runs apt-get against a private state that knows only `suite`, in `cwd`.
fn apt_get(suite: &str, cwd: &Path, args: &[&str]) -> anyhow::Result<()> {
    let dir = apt_dir(suite);
    let mut c = Command::new("apt-get");
    c.args(apt_options(&dir)).args(args).current_dir(cwd);
    println!("+ apt-get ({suite}) {}", args.join(" "));
    let status = c.status()?;
    if !status.success() {
        bail!("apt-get {} ({suite}) failed ({status})", args.join(" "));
    }
    Ok(())
}

fn apt_options(dir: &Path) -> Vec<String> {
    [
        format!(
            "-oDir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ),
        "-oDir::Etc::SourceParts=/dev/null".to_string(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        "-oAPT::Sandbox::User=root".to_string(),
        "-q".to_string(),
    ]
    .to_vec()
}

/// The `linux-image-<release>` package that `suite`'s `linux-image-amd64` depends on.
fn kernel_package(suite: &str) -> anyhow::Result<String> {
    let dir = apt_dir(suite);
    let lists = dir.join("lists");
    std::fs::create_dir_all(lists.join("partial"))?;
    std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
    std::fs::write(
        dir.join("sources.list"),
        format!("deb http://deb.debian.org/debian {suite} main\n"),
    )?;
    let have_index = std::fs::read_dir(&lists)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
    let find = || -> Option<String> {
        let mut c = Command::new("apt-cache");
        c.args(apt_options(&dir))
            .args(["depends", "linux-image-amd64"]);
        let out = c.stderr(Stdio::null()).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-"))
                .map(str::to_string)
        })
    };
    if have_index && let Some(p) = find() {
        return Ok(p);
    }
    apt_get(suite, &dir, &["update"])?;
    find().with_context(|| format!("{suite} has no linux-image-amd64"))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz\n\
kernel/fs/netfs/netfs.ko.xz:\n\
kernel/net/9p/9pnet.ko.xz:\n\
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/fs/overlayfs/overlay.ko.xz:\n";

    #[test]
    fn only_the_outermost_paths_under_tmp_are_kept_over_the_guests_tmp() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            kept_over_tmp(&[p("/tmp/ci"), p("/tmp/ci/target"), p("/work/x"), p("/tmp")]).unwrap(),
            vec!["/tmp/ci".to_string()]
        );
        assert_eq!(
            kept_over_tmp(&[p("/work/main"), p("/work/main/target")]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            kept_over_tmp(&[p("/tmp/a"), p("/tmp/b/target")]).unwrap(),
            vec!["/tmp/a".to_string(), "/tmp/b/target".to_string()]
        );
        assert!(kept_over_tmp(&[p("/tmp/my checkout")]).is_err());
    }

    #[test]
    fn modules_load_after_their_dependencies_and_built_ins_are_skipped() {
        let order = module_load_order(
            DEP,
            "kernel/drivers/virtio/virtio_pci.ko\n",
            &["virtio_pci", "9pnet_virtio", "9p", "overlay"],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz",
                "kernel/fs/overlayfs/overlay.ko.xz",
            ]
        );
        assert!(module_load_order(DEP, "", &["nope"]).is_err());
    }
}
