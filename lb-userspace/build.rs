//! Builds the eBPF programs in `lb-ebpf` with nightly and bpf-linker, into OUT_DIR, so the daemon
//! can embed the object. `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // The bench wrapper programs go into the object only for `cargo xtask bench xdp`, which
    // sets this; the daemon, the tests and the package carry the production programs alone.
    println!("cargo:rerun-if-env-changed=UNDERSTUDY_BENCH_PROGRAMS");
    let features: &[&str] = if std::env::var_os("UNDERSTUDY_BENCH_PROGRAMS").is_some() {
        &["bench"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            features,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install nightly's rust-src and bpf-linker")
}
