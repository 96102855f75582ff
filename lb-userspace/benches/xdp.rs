//! Nanoseconds per packet of the XDP program, per packet class, measured in the kernel with
//! `BPF_PROG_TEST_RUN` and `repeat`, beside a baseline measured in the same run.
//!
//! `repeat` re-runs one buffer, so a rewriting program would only see its input once. Every class
//! therefore runs through `bench_wrapper`, which restores the original packet before each run and
//! tail-calls the program under test. The baseline is the same wrapper tail-calling `bench_pass`
//! (a bare XDP_PASS); subtracting it leaves the program's own cost. A single run of each class is
//! checked first (action and bytes), so the path timed is the path named. Run with
//! `cargo xtask bench` (root; pinned to CPU 1).

use std::{net::IpAddr, time::Duration};

use aya::{
    maps::{Array, ProgramArray},
    programs::{TestRun as _, TestRunOptions},
};
use etherparse::{PacketBuilder, SlicedPacket};
use lb_common::{BENCH_MAX, BenchPacket};
use understudy::{
    config::Config,
    dataplane::{Dataplane, XDP_PROGRAM},
    plan::plan,
};
use understudy_testbed::{CLIENT_MAC, FibNamespace, XB_MAC, XC_MAC, backend_mac, require_root};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const REPEAT: u32 = 200_000;
const ROUNDS: usize = 7;
/// Offset of the IPv4 source address in an untagged frame: what `vary_at` overwrites.
const IPV4_SRC: u32 = 14 + 12;

const CONFIG: &str = r#"
dataplane = { interfaces = ["xc", "xb"] }
[[service]]
name = "web"
vip = "10.0.0.10:80"
backend = [{ address = "10.0.11.2:8080" }, { address = "10.0.11.3:8080" }, { address = "10.0.11.4:8080" }]
"#;

fn tcp(
    eth: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    syn: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(eth.0, eth.1)
        .ipv4(src, dst, 64)
        .tcp(ports.0, ports.1, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 6]).unwrap();
    out
}

fn ips(frame: &[u8]) -> (IpAddr, IpAddr) {
    match SlicedPacket::from_ethernet(frame).unwrap().net.unwrap() {
        etherparse::NetSlice::Ipv4(v4) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
        ),
        _ => panic!("not IPv4"),
    }
}

struct Bench {
    fib: FibNamespace,
    dp: Dataplane,
}

impl Bench {
    fn target(&mut self, program: &str) {
        let fd = self
            .dp
            .program(program)
            .unwrap()
            .fd()
            .unwrap()
            .try_clone()
            .unwrap();
        let map = self.dp.ebpf_mut().map_mut("BENCH_TARGET").unwrap();
        let mut targets = ProgramArray::try_from(map).unwrap();
        targets.set(0, &fd, 0).unwrap();
    }

    fn packet(&mut self, frame: &[u8], vary_at: u32) {
        let mut data = [0u8; BENCH_MAX];
        data[..frame.len()].copy_from_slice(frame);
        let value = BenchPacket {
            len: frame.len() as u32,
            vary_at,
            data,
        };
        let map = self.dp.ebpf_mut().map_mut("BENCH_PACKET").unwrap();
        Array::<_, BenchPacket>::try_from(map)
            .unwrap()
            .set(0, value, 0)
            .unwrap();
    }

    /// Runs the wrapper `repeat` times on `frame` arriving on `ifindex`; returns the action, the
    /// output of the last run and the mean time per run.
    fn run(&mut self, frame: &[u8], ifindex: u32, repeat: u32) -> (u32, Vec<u8>, Duration) {
        let ctx = FibNamespace::xdp_ctx(frame.len(), ifindex);
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.dp.program("bench_wrapper").unwrap();
        let r = self
            .fib
            .ns
            .enter(|| {
                prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat,
                    ..Default::default()
                })
            })
            .expect("test_run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out, r.duration)
    }

    /// Median over rounds of the mean ns per run.
    fn measure(&mut self, frame: &[u8], ifindex: u32) -> f64 {
        let mut v: Vec<f64> = (0..ROUNDS)
            .map(|_| self.run(frame, ifindex, REPEAT).2.as_nanos() as f64)
            .collect();
        v.sort_by(f64::total_cmp);
        v[ROUNDS / 2]
    }
}

struct Class {
    name: &'static str,
    frame: Vec<u8>,
    ifindex: u32,
    vary_at: u32,
    action: u32,
    check: fn(&[u8]) -> bool,
}

fn pin_to_cpu(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn main() {
    require_root("the XDP benchmark");
    // Benchmarks only run when asked for; `cargo test --benches` would pass `--bench` anyway.
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get().min(2) - 1);
    pin_to_cpu(cpu);
    let mut b = Bench {
        fib: FibNamespace::build(),
        dp: Dataplane::load().expect("load the XDP object"),
    };
    let config = Config::parse("bench.toml".as_ref(), CONFIG).unwrap();
    b.dp.install(&plan(&config)).unwrap();
    let (xc, xb) = (b.fib.xc, b.fib.xb);

    let client = [10, 0, 1, 2];
    let vip = [10, 0, 0, 10];
    let syn = tcp((CLIENT_MAC, XC_MAC), client, vip, (40000, 80), true);
    let ack = tcp((CLIENT_MAC, XC_MAC), client, vip, (40000, 80), false);
    let other = tcp(
        (CLIENT_MAC, XC_MAC),
        client,
        [10, 0, 0, 99],
        (40000, 80),
        true,
    );

    // Establish the flow with the real program, and find its backend for the reply.
    b.target(XDP_PROGRAM);
    b.packet(&syn, 0);
    let (_, out, _) = b.run(&syn, xc, 1);
    let (_, backend) = ips(&out);
    let IpAddr::V4(backend_v4) = backend else {
        unreachable!()
    };
    let reply = tcp(
        (backend_mac(backend), XB_MAC),
        backend_v4.octets(),
        client,
        (8080, 40000),
        false,
    );

    let classes = [
        Class {
            name: "new flow (SYN, FLOWS miss + insert)",
            frame: syn.clone(),
            ifindex: xc,
            vary_at: IPV4_SRC,
            action: XDP_REDIRECT,
            check: |o| ips(o).1.to_string().starts_with("10.0.11."),
        },
        Class {
            name: "established flow (FLOWS hit)",
            frame: ack,
            ifindex: xc,
            vary_at: 0,
            action: XDP_REDIRECT,
            check: |o| ips(o).1.to_string().starts_with("10.0.11."),
        },
        Class {
            name: "reply, reverse-translated",
            frame: reply,
            ifindex: xb,
            vary_at: 0,
            action: XDP_REDIRECT,
            check: |o| ips(o).0 == IpAddr::from([10, 0, 0, 10]),
        },
        Class {
            name: "non-VIP, passed",
            frame: other.clone(),
            ifindex: xc,
            vary_at: 0,
            action: XDP_PASS,
            check: |o| ips(o).1 == IpAddr::from([10, 0, 0, 99]),
        },
    ];

    // The baseline: the same wrapper, tail-calling a bare XDP_PASS.
    b.target("bench_pass");
    b.packet(&syn, IPV4_SRC);
    let baseline = b.measure(&syn, xc);

    println!(
        "XDP program, ns per packet (median of {ROUNDS} x {REPEAT} runs, pinned to CPU {cpu})\n"
    );
    println!(
        "{:<38} {:>10} {:>12} {:>10}",
        "class", "wrapped", "program", "ratio"
    );
    println!(
        "{:<38} {:>10.1} {:>12} {:>10}",
        "baseline (wrapper + XDP_PASS)", baseline, "-", "1.00"
    );
    b.target(XDP_PROGRAM);
    for c in &classes {
        b.packet(&c.frame, c.vary_at);
        let (action, out, _) = b.run(&c.frame, c.ifindex, 1);
        assert_eq!(action, c.action, "{}: unexpected action", c.name);
        assert!(
            (c.check)(&out),
            "{}: the output is not what this path writes",
            c.name
        );
        let total = b.measure(&c.frame, c.ifindex);
        println!(
            "{:<38} {:>10.1} {:>12.1} {:>10.2}",
            c.name,
            total,
            total - baseline,
            total / baseline
        );
    }
    println!(
        "\nwrapped: wrapper + program; program: wrapped - baseline; ratio: wrapped / baseline"
    );
    println!("reproduce: cargo xtask bench   (as root)");
}
