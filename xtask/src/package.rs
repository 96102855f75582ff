//! `cargo xtask package`: a Debian package with the release binary, the systemd unit, the
//! example configs and the README, built with `dpkg-deb`, then checked: the files it must hold,
//! and the unit through `systemd-analyze verify` (when systemd's tools are present).

use std::{fs, path::PathBuf};

use anyhow::{Context as _, bail};

use crate::util::{cmd, output, root, target_dir};

/// Files the package must hold.
const EXPECTED: &[&str] = &[
    "./usr/bin/understudy",
    "./lib/systemd/system/understudy.service",
    "./etc/understudy/understudy.toml",
    "./usr/share/doc/understudy/examples/demo.toml",
    "./usr/share/doc/understudy/examples/failover.toml",
    "./usr/share/doc/understudy/examples/http.toml",
    "./usr/share/doc/understudy/README.md",
];

pub fn run() -> anyhow::Result<PathBuf> {
    let binary = crate::build::run(&crate::build::Options { release: true })?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = output("dpkg", &["--print-architecture"])
        .context("dpkg is missing: the package needs Debian's dpkg-dev (cargo xtask setup)")?;
    let arch = arch.trim();
    let name = format!("understudy_{version}_{arch}");
    let out = target_dir().join("package");
    let tree = out.join(&name);
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    let place = |from: PathBuf, to: &str, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let dest = tree.join(to);
        fs::create_dir_all(dest.parent().expect("has a parent"))?;
        fs::copy(&from, &dest).with_context(|| format!("copying {}", from.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let unit = root().join("lb-userspace/packaging/understudy.service");
    place(binary.clone(), "usr/bin/understudy", 0o755)?;
    place(unit.clone(), "lib/systemd/system/understudy.service", 0o644)?;
    place(
        root().join("config/failover.toml"),
        "etc/understudy/understudy.toml",
        0o644,
    )?;
    for example in ["demo.toml", "failover.toml", "http.toml"] {
        place(
            root().join("config").join(example),
            &format!("usr/share/doc/understudy/examples/{example}"),
            0o644,
        )?;
    }
    place(
        root().join("README.md"),
        "usr/share/doc/understudy/README.md",
        0o644,
    )?;
    fs::create_dir_all(tree.join("DEBIAN"))?;
    fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: understudy\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: Understudy developers <understudy@example.org>\nSection: net\nPriority: optional\n\
             Depends: libc6\nDescription: eBPF-accelerated failover load balancer\n \
             An XDP data path steers connections to healthy backends; a daemon runs health checks,\n \
             priority tiers and sub-millisecond failover. Edit /etc/understudy/understudy.toml, then\n \
             systemctl enable --now understudy.\n"
        ),
    )?;
    fs::write(
        tree.join("DEBIAN/conffiles"),
        "/etc/understudy/understudy.toml\n",
    )?;
    let deb = out.join(format!("{name}.deb"));
    cmd(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            tree.to_str().context("utf-8 path")?,
            deb.to_str().context("utf-8 path")?,
        ],
    )?;

    let contents = output("dpkg-deb", &["--contents", deb.to_str().unwrap()])
        .context("reading the package back")?;
    for want in EXPECTED {
        if !contents.lines().any(|l| l.ends_with(want)) {
            bail!("the package lacks {want}:\n{contents}");
        }
    }
    if output("systemd-analyze", &["--version"]).is_some() {
        // Verify the unit as installed, with ExecStart pointing at the binary just built.
        let text = fs::read_to_string(&unit)?.replace(
            "/usr/bin/understudy",
            binary.to_str().context("utf-8 path")?,
        );
        let check = out.join("understudy.service");
        fs::write(&check, text)?;
        let verified = std::process::Command::new("systemd-analyze")
            .args(["verify", check.to_str().unwrap()])
            .output()?;
        // It exits 0 on a directive it cannot parse and only warns, naming the file: any
        // line about the unit is a failure.
        let stderr = String::from_utf8_lossy(&verified.stderr).into_owned();
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("understudy.service"))
            .collect();
        if !verified.status.success() || !complaints.is_empty() {
            bail!("systemd-analyze verify rejects the unit:\n{stderr}");
        }
    }
    println!(
        "package: {} (checked: {} files, unit verified)",
        deb.display(),
        EXPECTED.len()
    );
    Ok(deb)
}
