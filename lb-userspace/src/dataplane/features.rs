//! What the data plane needs from the running kernel, checked before the object loads.
//!
//! On a kernel without one of these, loading fails deep in the verifier with a dump that names
//! a helper number, not a kernel. So the daemon asks first, with aya's probes (a minimal program
//! or map of each kind, as libbpf's `libbpf_probe_bpf_*` does), and refuses in one sentence that
//! names the missing feature and the release that brought it. The newest requirement is
//! `bpf_xdp_store_bytes` (5.18); Understudy is tested on 6.1 and later (README, "Kernels").

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// The oldest kernel the project is tested on, named in the refusal.
pub const TESTED_MINIMUM: &str = "6.1";

/// One thing the programs use.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    Program(ProgramType),
    Map(MapType),
    /// A helper, called from programs of this type.
    Helper(ProgramType, BpfHelper),
}

/// A need, what to call it in the refusal, and the Linux release that brought it.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    pub need: Need,
    pub name: &'static str,
    pub since: &'static str,
}

const fn req(need: Need, name: &'static str, since: &'static str) -> Requirement {
    Requirement { need, name, since }
}

/// Everything `lb-ebpf` uses, in the order it is checked.
pub const REQUIREMENTS: &[Requirement] = &[
    req(Need::Program(ProgramType::Xdp), "XDP programs", "4.8"),
    req(
        Need::Program(ProgramType::SchedClassifier),
        "TC classifier programs",
        "4.1",
    ),
    req(Need::Map(MapType::LruHash), "LRU hash maps", "4.10"),
    req(Need::Map(MapType::LpmTrie), "LPM trie maps", "4.11"),
    req(Need::Map(MapType::PerCpuArray), "per-CPU arrays", "4.6"),
    req(Need::Map(MapType::PerCpuHash), "per-CPU hash maps", "4.6"),
    req(
        Need::Map(MapType::ProgramArray),
        "program arrays (tail calls)",
        "4.2",
    ),
    req(Need::Map(MapType::RingBuf), "the BPF ring buffer", "5.8"),
    req(
        Need::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_fib_lookup),
        "the XDP helper bpf_fib_lookup",
        "4.18",
    ),
    req(
        Need::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_adjust_head),
        "the XDP helper bpf_xdp_adjust_head",
        "4.10",
    ),
    req(
        Need::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_adjust_tail),
        "the XDP helper bpf_xdp_adjust_tail",
        "4.18",
    ),
    req(
        Need::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_csum_diff),
        "the XDP helper bpf_csum_diff",
        "4.6",
    ),
    req(
        Need::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_store_bytes),
        "the XDP helper bpf_xdp_store_bytes",
        "5.18",
    ),
    req(
        Need::Helper(
            ProgramType::SchedClassifier,
            BpfHelper::BPF_FUNC_redirect_neigh,
        ),
        "the TC helper bpf_redirect_neigh",
        "5.10",
    ),
];

/// A requirement the running kernel does not meet.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) lacks {}, which Understudy's data plane needs: it came in Linux {}, \
     and Understudy is tested on {TESTED_MINIMUM} and later; run a newer kernel",
    .missing.name, .missing.since
)]
pub struct Missing {
    pub missing: Requirement,
    pub release: String,
}

/// Checks every requirement with aya's probes.
pub fn check() -> Result<(), Missing> {
    first_missing(|need| match need {
        // A probe that errors (rather than answering no) is not evidence of absence: the
        // load that follows will say what is wrong.
        Need::Program(p) => is_program_supported(p).unwrap_or(true),
        Need::Map(m) => is_map_supported(m).unwrap_or(true),
        Need::Helper(p, h) => is_helper_supported(p, h).unwrap_or(true),
    })
}

/// The first requirement `supported` says no to.
pub fn first_missing(supported: impl Fn(Need) -> bool) -> Result<(), Missing> {
    match REQUIREMENTS.iter().find(|r| !supported(r.need)) {
        None => Ok(()),
        Some(r) => Err(Missing {
            missing: *r,
            release: kernel_release(),
        }),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "release unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_helper_is_refused_in_one_sentence_naming_it_and_its_kernel() {
        let e = first_missing(|need| {
            !matches!(need, Need::Helper(_, BpfHelper::BPF_FUNC_xdp_store_bytes))
        })
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("lacks the XDP helper bpf_xdp_store_bytes"),
            "{text}"
        );
        assert!(text.contains("came in Linux 5.18"), "{text}");
        assert!(text.contains("tested on 6.1 and later"), "{text}");
        assert_eq!(text.matches(". ").count(), 0, "one sentence: {text}");
        assert!(first_missing(|_| true).is_ok());
    }
}
