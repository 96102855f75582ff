//! The `understudy` command line as an operator meets it: `check`, and the errors `run` gives
//! before it touches the kernel (bad config, unknown interface, missing privileges).

use std::{path::PathBuf, process::Command};

use understudy_testbed::{Netns, require_root};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

fn demo_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/demo.toml")
}

fn write(name: &str, text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("understudy-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run understudy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_reference_configs() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    for (file, summary) in [
        ("failover.toml", "valid ("),
        ("http.toml", "valid (2 services, 5 backends, 1 interfaces)"),
        (
            "routes.toml",
            "valid (1 services, 3 pools, 3 routes, 5 backends, 1 interfaces)",
        ),
        ("edge.toml", "valid (1 services, 2 backends, 2 interfaces)"),
        (
            "gateway.toml",
            "valid (1 services, 2 pools, 2 routes, 3 backends, 1 interfaces)",
        ),
        ("dsr.toml", "valid (2 services, 4 backends, 2 interfaces)"),
        (
            "tunnel.toml",
            "valid (2 services, 5 backends, 1 interfaces)",
        ),
    ] {
        let (code, stdout, stderr) = output(Command::new(BIN).arg("check").arg(dir.join(file)));
        assert_eq!(code, 0, "{file}: {stderr}");
        assert!(stdout.contains(summary), "{file}: {stdout}");
    }
}

#[test]
fn check_accepts_the_demo_config() {
    let (code, stdout, _) = output(Command::new(BIN).arg("check").arg(demo_config()));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("valid (5 services, 15 backends, 4 interfaces)"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_line_field_and_fix() {
    let text = std::fs::read_to_string(demo_config())
        .unwrap()
        .replace("vip = \"[fd00::10]:80\"", "vip = \"10.0.0.10:80\"");
    let path = write("dup", &text);
    let (code, _, stderr) = output(Command::new(BIN).arg("check").arg(&path));
    assert_eq!(code, 2, "{stderr}");
    let line = text
        .lines()
        .position(|l| l.contains("vip = \"10.0.0.10:80\""))
        .unwrap();
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("vip = \"10.0.0.10:80\""))
        .nth(1)
        .unwrap()
        .0;
    assert!(
        stderr.contains(&format!(
            "{}:{}:7: service[1].vip: 10.0.0.10:80/tcp is already the VIP of service \"web\" (line {})",
            path.display(),
            second + 1,
            line + 1
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("fix: give each service its own address"),
        "{stderr}"
    );
    std::fs::remove_file(path).ok();
}

#[test]
fn run_refuses_an_unknown_interface_before_attaching_anything() {
    require_root("the unknown-interface test");
    let ns = Netns::new("cli");
    let text = std::fs::read_to_string(demo_config()).unwrap();
    let path = write("iface", &text);
    let (code, _, stderr) = output(
        ns.command(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .env("NO_COLOR", "1"),
    );
    assert_ne!(code, 0);
    let line = text
        .lines()
        .position(|l| l.starts_with("interfaces ="))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!(
            "{}:{line}:15: dataplane.interfaces[0]: there is no interface \"lb-client\" on this host",
            path.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("fix: use one of the interfaces `ip link` shows: lo"),
        "{stderr}"
    );
    std::fs::remove_file(path).ok();
}

#[test]
fn run_without_privileges_names_the_missing_capabilities() {
    require_root("the privilege test (it drops to nobody)");
    let path = write("caps", &std::fs::read_to_string(demo_config()).unwrap());
    let (code, _, stderr) = output(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(BIN)
            .args(["run", "--config"])
            .arg(&path),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("lacks CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"),
        "{stderr}"
    );
    assert!(
        stderr.contains("setcap cap_bpf,cap_perfmon,cap_net_admin+ep"),
        "{stderr}"
    );
    std::fs::remove_file(path).ok();
}

/// The test harness's admin client speaks to the daemon's default listener, and sends the header
/// the admin guard asks of state-changing requests.
#[test]
fn the_harness_admin_client_matches_the_daemon() {
    assert_eq!(
        understudy_testbed::ADMIN_LISTEN,
        understudy::config::DEFAULT_ADMIN_LISTEN
    );
    assert_eq!(
        understudy_testbed::ADMIN_CLIENT_HEADER,
        understudy::admin::guard::CLIENT_HEADER
    );
}

/// `explain --config` plans a config offline: no daemon, no kernel, no root.
#[test]
fn explain_offline_names_the_backend_and_the_entry() {
    let out = Command::new(BIN)
        .args(["explain", "--config"])
        .arg(demo_config())
        .args(["web", "198.51.100.7:43122"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("service web: flow 198.51.100.7:43122 -> 10.0.0.10:80 tcp"),
        "{stdout}"
    );
    assert!(stdout.contains("a new flow goes to 10.0.11."), "{stdout}");
    assert!(stdout.contains("offline"), "{stdout}");
    // An HTTP service has no per-flow answer, and says why.
    let out = Command::new(BIN)
        .args(["explain", "--config"])
        .arg(demo_config())
        .args(["api", "198.51.100.7:43122"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP service"));
}

/// `explain` says when the access lists refuse a source, and why, as the kernel would.
#[test]
fn explain_names_the_access_list_that_refuses_a_source() {
    let edge = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/edge.toml");
    let run = |client: &str| {
        let out = Command::new(BIN)
            .args(["explain", "--config"])
            .arg(&edge)
            .args(["web", client])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let refused = |reason: &str| format!("the access lists refuse this source ({reason})");
    assert!(run("198.51.100.66:40000").contains(&refused("deny")));
    assert!(run("192.0.2.9:40000").contains(&refused("global_deny")));
    assert!(run("203.0.113.99:40000").contains(&refused("not_allowed")));
    let allowed = run("198.51.100.7:40000");
    assert!(!allowed.contains("refuse this source"), "{allowed}");
    assert!(allowed.contains("a new flow goes to 10.0.11."), "{allowed}");
}

/// The shell completions and the man page come from the command line's own definition, so they
/// name every subcommand (the .deb ships them; `cargo xtask package` checks they are there).
#[test]
fn completions_and_the_man_page_name_every_subcommand() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let subcommands = [
        "run", "check", "status", "drain", "enable", "reload", "explain", "clean",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for sub in subcommands {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH understudy 1"), "{man}");
    for sub in subcommands {
        assert!(man.contains(sub), "the man page lacks {sub}");
    }
}

/// Exit codes as the README documents them: 2 for an invalid config or a usage error, 1 for a
/// failed admin request (here: no daemon listening).
#[test]
fn exit_codes() {
    let bad = write("exit-bad", "[dataplane]\ninterfaces = []\n");
    let code = |args: &[&str]| Command::new(BIN).args(args).output().unwrap().status.code();
    assert_eq!(code(&["check", bad.to_str().unwrap()]), Some(2));
    assert_eq!(code(&["no-such-command"]), Some(2));
    assert_eq!(code(&["status", "--admin", "127.0.0.1:1"]), Some(1));
    assert_eq!(code(&["check", demo_config().to_str().unwrap()]), Some(0));
    std::fs::remove_file(bad).ok();
}

/// The shipped Prometheus rules pass `promtool check rules` (Debian's prometheus, installed by
/// `cargo xtask setup`), and the Grafana dashboard is JSON whose every panel has a query. That
/// each metric they name exists is checked against a running daemon in `e2e_admin`.
#[test]
fn the_alert_rules_and_the_dashboard_check() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let rules = dir.join("understudy-alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 10 rules found"), "{said}");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap())
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty()
                && targets.iter().all(|t| t["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("understudy_"))),
            "panel {} has no query",
            p["title"]
        );
    }
}
