//! `cargo xtask setup`: makes this machine able to build, run and test Understudy. Every step
//! checks first and changes nothing when already done; each prints what it found or did.

use anyhow::bail;

use crate::util::{cmd, is_root, output};

/// bpf-linker 0.10.0 loads nightly's own libLLVM 22 at run time (feature `rust-llvm-22`).
const BPF_LINKER_VERSION: &str = "0.10.0";
const BPF_LINKER_LLVM: u32 = 22;

/// Debian packages the tests, demo and benchmarks call: ethtool (veth offloads), iproute2
/// (namespaces), procps (sysctl), util-linux (setpriv, prlimit), curl and python3 (the demo's
/// client and HTTP backends), chromium (renders the status page in a test), dpkg-dev
/// (packaging), wrk (the close-mode load test) and bird2 (the BGP speaker the VIPs are
/// announced through, and the router in the scale-out test), qemu-system-x86 and busybox-static
/// (the kernel matrix's guest and its init, `vm.rs`), with xz-utils and kmod (to unpack and index
/// the guest kernel's modules).
const PACKAGES: &[&str] = &[
    "ethtool",
    "iproute2",
    "procps",
    "util-linux",
    "curl",
    "python3",
    "chromium",
    "dpkg-dev",
    "wrk",
    "bird2",
    "prometheus",
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "kmod",
];

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages(PACKAGES)?;
    bpffs()?;
    guest_kernel();
    Ok(())
}

/// Debian 12's kernel package for the kernel matrix, fetched and unpacked into the target
/// directory (never installed). Only the matrix needs it, so failing here is a warning.
fn guest_kernel() {
    match crate::vm::Kernel::get("6.1") {
        Ok(k) => println!("setup: guest kernel {}: ready in target/vm", k.release),
        Err(e) => println!(
            "setup: warning: could not prepare Debian 12's kernel for the kernel matrix              (`cargo xtask vm`), which will fail until it can: {e:#}"
        ),
    }
}

fn rust_src() -> anyhow::Result<()> {
    let Some(installed) = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    ) else {
        bail!(
            "the nightly toolchain is missing: install it with \
             `rustup toolchain install nightly --component rust-src`"
        );
    };
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: nightly rust-src: present");
        return Ok(());
    }
    println!("setup: nightly rust-src: installing");
    cmd(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

fn nightly_llvm_major() -> Option<u32> {
    let v = output("rustc", &["+nightly", "-vV"])?;
    let line = v.lines().find_map(|l| l.strip_prefix("LLVM version: "))?;
    line.split('.').next()?.trim().parse().ok()
}

fn bpf_linker() -> anyhow::Result<()> {
    let llvm = nightly_llvm_major();
    if llvm != Some(BPF_LINKER_LLVM) {
        bail!(
            "nightly uses LLVM {}, but bpf-linker {BPF_LINKER_VERSION} needs LLVM {BPF_LINKER_LLVM}: \
             install the bpf-linker release whose `rust-llvm-NN` feature matches `rustc +nightly -vV`",
            llvm.map_or("(unknown)".to_string(), |v| v.to_string())
        );
    }
    if let Some(v) = output("bpf-linker", &["--version"])
        && v.contains(BPF_LINKER_VERSION)
    {
        println!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    println!("setup: bpf-linker {BPF_LINKER_VERSION}: installing (about a minute)");
    cmd(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ],
    )
}

/// Installs the Debian packages in `list` that are missing (as root), or says which are.
pub fn packages(list: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = list
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages: present ({})", list.join(", "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages are missing: {}; install them as root with `apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("setup: Debian packages: installing {}", missing.join(", "));
    cmd("apt-get", &["update", "-q"])?;
    let mut args = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    args.extend(&missing);
    // SAFETY: single-threaded at this point; apt must not ask questions.
    unsafe { std::env::set_var("DEBIAN_FRONTEND", "noninteractive") };
    cmd("apt-get", &args)
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        println!("setup: bpffs at /sys/fs/bpf: mounted");
        return Ok(());
    }
    if !is_root() {
        println!(
            "setup: bpffs is not mounted at /sys/fs/bpf; as root run `mount -t bpf bpf /sys/fs/bpf`"
        );
        return Ok(());
    }
    println!("setup: bpffs at /sys/fs/bpf: mounting");
    cmd("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}
