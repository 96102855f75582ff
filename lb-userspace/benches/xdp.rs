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
use lb_common::{BENCH_MAX, BenchPacket, ring_entry};
use understudy::{
    config::Config,
    dataplane::{Dataplane, XDP_PROGRAM},
    plan::plan,
};
use understudy_testbed::{CLIENT_MAC, FibNamespace, XB_MAC, XC_MAC, backend_mac, require_root};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const REPEAT: u32 = 200_000;
const ROUNDS: usize = 7;
/// Offset of the IPv4 source address in an untagged frame: what `vary_at` overwrites.
const IPV4_SRC: u32 = 14 + 12;

const CONFIG: &str = r#"
dataplane = { interfaces = ["xc", "xb"], flood_threshold = 0 }
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

    fn packet(&mut self, frame: &[u8], vary: Vary) {
        let mut data = [0u8; BENCH_MAX];
        data[..frame.len()].copy_from_slice(frame);
        let (vary_at, vary_len) = vary.at();
        let value = BenchPacket {
            len: frame.len() as u32,
            vary_at,
            vary_len,
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
    /// Prepares class `c` (its config, its packet, any prefill) and checks one run's action and
    /// output, so the path timed is the path named.
    fn check(&mut self, syn: &[u8], xc: u32, c: &Class, install: impl Fn(&mut Bench)) {
        install(self);
        if c.name == "rate-limited new flow" {
            // Spend the source's one token on another flow.
            self.packet(syn, Vary::Port);
            let _ = self.run(syn, xc, 1);
        }
        self.packet(&c.frame, c.vary);
        if c.prefill > 0 {
            let _ = self.run(&c.frame, c.ifindex, c.prefill);
        }
        let (action, out, _) = self.run(&c.frame, c.ifindex, 1);
        assert_eq!(action, c.action, "{}: unexpected action", c.name);
        assert!(
            (c.check)(&out),
            "{}: the output is not what this path writes ({:?})",
            c.name,
            ips(&out)
        );
    }

    fn measure(&mut self, frame: &[u8], ifindex: u32, repeat: u32) -> f64 {
        let mut v: Vec<f64> = (0..ROUNDS)
            .map(|_| self.run(frame, ifindex, repeat).2.as_nanos() as f64)
            .collect();
        v.sort_by(f64::total_cmp);
        v[ROUNDS / 2]
    }
}

/// What the wrapper changes on every run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vary {
    /// Nothing: the same packet every run.
    Nothing,
    /// The IPv4 source: a new client every run.
    Source,
    /// The TCP source port: a new flow from the same client every run.
    Port,
}

impl Vary {
    fn at(self) -> (u32, u32) {
        match self {
            Vary::Nothing => (0, 4),
            Vary::Source => (IPV4_SRC, 4),
            Vary::Port => (TCP_SPORT, 2),
        }
    }
}

/// Offset of the TCP source port in an untagged IPv4 frame without options.
const TCP_SPORT: u32 = 14 + 20;

struct Class {
    name: &'static str,
    /// The config installed before it runs (the services stay; flags and settings change).
    config: &'static str,
    frame: Vec<u8>,
    ifindex: u32,
    vary: Vary,
    /// Runs before timing (to fill the flow table).
    prefill: u32,
    /// Runs per round: small where the table must not fill.
    repeat: u32,
    /// Every ring entry names a backend that is down, and another as its alternative.
    down: bool,
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

/// The bench's service, its `flood_threshold = 0` replaced by `dataplane` and `service` lines
/// added. The guard is off in `CONFIG`, or it would turn every new-flow class into the
/// flood-mode one: the bench opens millions of flows a second.
fn variant(dataplane: &str, service: &str) -> &'static str {
    let text = CONFIG.replace("flood_threshold = 0", dataplane).replace(
        "vip = \"10.0.0.10:80\"",
        &format!("vip = \"10.0.0.10:80\"\n{service}"),
    );
    Box::leak(text.into_boxed_str())
}

/// Every entry of the bench's service names 10.0.11.2, marked down, and 10.0.11.3 as the
/// alternative: each new flow takes the path of a failure the writer has not written yet
/// (one more `BACKENDS` lookup). The next class's install writes the plan back.
fn every_entry_to_a_dead_backend(b: &mut Bench) {
    let config = Config::parse("bench.toml".as_ref(), CONFIG).unwrap();
    let p = plan(&config);
    let svc = &p.services[0];
    let id = |ip: &str| {
        svc.members
            .iter()
            .find(|m| m.address.ip().to_string() == ip)
            .unwrap()
            .id
    };
    let (dead, alternative) = (id("10.0.11.2"), id("10.0.11.3"));
    let entries = vec![ring_entry::pack(dead, Some(alternative)); svc.initial_ring().len()];
    b.dp.install_table(svc, &entries).unwrap();
    let mut info = b.dp.backend_entry(dead).unwrap();
    info.state = 0;
    b.dp.set_backend(dead, &info).unwrap();
}

fn main() {
    require_root("the XDP benchmark");
    let check_only = std::env::var_os("UNDERSTUDY_BENCH_CHECK").is_some();
    // Benchmarks only run when asked for; `cargo test --benches` would pass `--bench` anyway.
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get().min(2) - 1);
    pin_to_cpu(cpu);
    let mut b = Bench {
        fib: FibNamespace::build(),
        dp: Dataplane::load().expect("load the XDP object"),
    };
    let install = |b: &mut Bench, text: &str| {
        let config = Config::parse("bench.toml".as_ref(), text).unwrap();
        b.dp.install(&plan(&config)).unwrap();
    };
    let prepare = |b: &mut Bench, c: &Class| {
        install(b, c.config);
        if c.down {
            every_entry_to_a_dead_backend(b);
        }
    };
    install(&mut b, CONFIG);
    let (xc, xb) = (b.fib.xc, b.fib.xb);

    let client = [10, 0, 1, 2];
    let vip = [10, 0, 0, 10];
    let syn = tcp((CLIENT_MAC, XC_MAC), client, vip, (40000, 80), true);
    let fresh_syn = tcp((CLIENT_MAC, XC_MAC), client, vip, (50000, 80), true);
    let ack = tcp((CLIENT_MAC, XC_MAC), client, vip, (40000, 80), false);
    // A port of its own: the varied sources wrap around, and must not find the flows the
    // classes before left in `FLOWS`.
    let alternative_syn = tcp((CLIENT_MAC, XC_MAC), client, vip, (41000, 80), true);
    let other = tcp(
        (CLIENT_MAC, XC_MAC),
        client,
        [10, 0, 0, 99],
        (40000, 80),
        true,
    );

    // Establish the flow with the real program, and find its backend for the reply.
    b.target(XDP_PROGRAM);
    b.packet(&syn, Vary::Nothing);
    let (_, out, _) = b.run(&syn, xc, 1);
    let (_, backend) = ips(&out);
    let IpAddr::V4(backend_v4) = backend else {
        unreachable!()
    };
    let reply = |port| {
        tcp(
            (backend_mac(backend), XB_MAC),
            backend_v4.octets(),
            client,
            (8080, port),
            false,
        )
    };
    let to_backend: fn(&[u8]) -> bool = |o| ips(o).1.to_string().starts_with("10.0.11.");
    let to_client: fn(&[u8]) -> bool = |o| ips(o).0 == IpAddr::from([10, 0, 0, 10]);
    let to_alternative: fn(&[u8]) -> bool = |o| ips(o).1 == IpAddr::from([10, 0, 11, 3]);
    let untouched: fn(&[u8]) -> bool = |o| ips(o).1 == IpAddr::from([10, 0, 0, 99]);
    let any: fn(&[u8]) -> bool = |_| true;
    // Fewer runs than a CPU's share of FLOWS (262,144 over the possible CPUs).
    let not_full =
        (lb_common::FLOWS_CAPACITY / understudy::dataplane::possible_cpus() / 2 / ROUNDS as u32)
            .min(REPEAT);
    let off = "flood_threshold = 0";
    let flood = variant("flood_threshold = 10", "");
    let denied = variant(
        "flood_threshold = 0, acl = { deny = [\"10.0.1.0/24\"] }",
        "",
    );
    let limited = variant(
        off,
        "rate_limit = { connections_per_second = 1, burst = 1 }",
    );
    // The forwarding modes: the packet keeps the VIP's port, so the backends take port 80.
    let mode = |settings: &str| -> &'static str {
        let text = CONFIG.replace(":8080", ":80").replace(
            "vip = \"10.0.0.10:80\"",
            &format!("vip = \"10.0.0.10:80\"\n{settings}"),
        );
        Box::leak(text.into_boxed_str())
    };
    let dsr = mode("mode = \"dsr\"");
    let ipip = mode("mode = \"tunnel\"\ntunnel = { source_v4 = \"10.0.11.1\" }");
    let gue = mode("mode = \"tunnel\"\ntunnel = { encap = \"gue\", source_v4 = \"10.0.11.1\" }");
    // DSR leaves the addresses alone: the frame goes to a backend's MAC.
    let to_backend_mac: fn(&[u8]) -> bool = |o| o[..5] == [0x02, 0, 0, 0, 0x11];
    let class = |name, config, frame: &Vec<u8>, ifindex, vary, action, check| Class {
        name,
        config,
        frame: frame.clone(),
        ifindex,
        vary,
        prefill: 0,
        repeat: REPEAT,
        down: false,
        action,
        check,
    };
    let classes = [
        Class {
            repeat: not_full,
            ..class(
                "new flow, table not full",
                CONFIG,
                &syn,
                xc,
                Vary::Source,
                XDP_REDIRECT,
                to_backend,
            )
        },
        Class {
            repeat: not_full,
            down: true,
            ..class(
                "new flow, its backend down (alternative)",
                CONFIG,
                &alternative_syn,
                xc,
                Vary::Source,
                XDP_REDIRECT,
                to_alternative,
            )
        },
        Class {
            prefill: 2 * lb_common::FLOWS_CAPACITY,
            ..class(
                "new flow, table full (evicting)",
                CONFIG,
                &syn,
                xc,
                Vary::Source,
                XDP_REDIRECT,
                to_backend,
            )
        },
        class(
            "new flow in flood mode (unwritten)",
            flood,
            &syn,
            xc,
            Vary::Source,
            XDP_REDIRECT,
            to_backend,
        ),
        class(
            "established flow (FLOWS hit)",
            CONFIG,
            &ack,
            xc,
            Vary::Nothing,
            XDP_REDIRECT,
            to_backend,
        ),
        class(
            "established flow, DSR",
            dsr,
            &ack,
            xc,
            Vary::Nothing,
            XDP_REDIRECT,
            to_backend_mac,
        ),
        class(
            "established flow, IPIP",
            ipip,
            &ack,
            xc,
            Vary::Nothing,
            XDP_REDIRECT,
            to_backend,
        ),
        class(
            "established flow, GUE",
            gue,
            &ack,
            xc,
            Vary::Nothing,
            XDP_REDIRECT,
            to_backend,
        ),
        class(
            "reply of a tracked flow",
            CONFIG,
            &reply(40000),
            xb,
            Vary::Nothing,
            XDP_REDIRECT,
            to_client,
        ),
        class(
            "reply, flow evicted",
            CONFIG,
            &reply(40999),
            xb,
            Vary::Nothing,
            XDP_REDIRECT,
            to_client,
        ),
        class(
            "denied source (access list)",
            denied,
            &syn,
            xc,
            Vary::Nothing,
            XDP_DROP,
            any,
        ),
        class(
            "rate-limited new flow",
            limited,
            &fresh_syn,
            xc,
            Vary::Port,
            XDP_DROP,
            any,
        ),
        class(
            "non-VIP, passed",
            CONFIG,
            &other,
            xc,
            Vary::Nothing,
            XDP_PASS,
            untouched,
        ),
    ];

    // The baselines: the same wrapper, tail-calling a bare XDP_PASS, varying what each class
    // varies (writing the varied field costs time of its own).
    b.target("bench_pass");
    if check_only {
        // The kernel matrix: every program verified and every class's path checked once, on
        // the guest's kernel, without the timing (meaningless under emulation).
        for vary in [Vary::Nothing, Vary::Source, Vary::Port] {
            b.packet(&syn, vary);
            assert_eq!(b.run(&syn, xc, 1).0, XDP_PASS, "the baseline wrapper");
        }
        b.target(XDP_PROGRAM);
        for c in &classes {
            b.check(&syn, xc, c, |b: &mut Bench| prepare(b, c));
            println!("checked: {}", c.name);
        }
        println!("xdp bench: every class checked (UNDERSTUDY_BENCH_CHECK set: no timing)");
        return;
    }
    let mut baselines = Vec::new();
    for vary in [Vary::Nothing, Vary::Source, Vary::Port] {
        b.packet(&syn, vary);
        baselines.push((vary, b.measure(&syn, xc, REPEAT)));
    }
    let baseline = |vary: Vary| baselines.iter().find(|(v, _)| *v == vary).unwrap().1;

    println!("XDP program, ns per packet (median of {ROUNDS} rounds, pinned to CPU {cpu})\n");
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>8}",
        "class", "wrapped", "baseline", "program", "ratio"
    );
    for (vary, name) in [
        (Vary::Nothing, "baseline, same packet"),
        (Vary::Source, "baseline, new source each run"),
        (Vary::Port, "baseline, new port each run"),
    ] {
        println!(
            "{:<38} {:>10.1} {:>10} {:>10} {:>8}",
            name,
            baseline(vary),
            "-",
            "-",
            "1.00"
        );
    }
    b.target(XDP_PROGRAM);
    for c in &classes {
        b.check(&syn, xc, c, |b: &mut Bench| prepare(b, c));
        let total = b.measure(&c.frame, c.ifindex, c.repeat);
        let base = baseline(c.vary);
        println!(
            "{:<38} {:>10.1} {:>10.1} {:>10.1} {:>8.2}",
            c.name,
            total,
            base,
            total - base,
            total / base
        );
    }
    let counters = b.dp.counters().unwrap();
    println!(
        "\nwrapped: wrapper + program; baseline: the wrapper varying the same field; program: \
         wrapped - baseline; ratio: wrapped / baseline. Flood mode left {} SYNs unwritten; the \
         access list and the rate limit refused {}; {} new flows went to their entry's \
         alternative.",
        counters.get(lb_common::Counter::FloodUnwritten),
        counters.get(lb_common::Counter::DropRefused),
        counters.get(lb_common::Counter::RingAlternative),
    );
    println!("reproduce: cargo xtask bench xdp   (as root)");
}
