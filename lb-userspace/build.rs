//! Builds the eBPF programs in `lb-ebpf` with nightly and bpf-linker, into OUT_DIR, so the daemon
//! can embed the object. `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;
use object::{Object as _, ObjectSection as _};

#[path = "src/btf_names.rs"]
mod btf_names;

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
    let built = aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            features,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install nightly's rust-src and bpf-linker");
    built?;
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    for object in ["understudy", "understudy-decap"] {
        sanitize_btf(&out.join(object))?;
    }
    Ok(())
}

/// Rewrites the type names in the object's `.BTF` that the kernel would refuse (see
/// `src/btf_names.rs`), in place.
fn sanitize_btf(path: &std::path::Path) -> anyhow::Result<()> {
    let mut data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let range = {
        let file =
            object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
        let Some(section) = file.section_by_name(".BTF") else {
            return Ok(());
        };
        section.file_range().context(".BTF has no file range")?
    };
    let (start, len) = (range.0 as usize, range.1 as usize);
    btf_names::sanitize(&mut data[start..start + len])
        .map_err(|e| anyhow!("{}: .BTF: {e:?}", path.display()))?;
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}
