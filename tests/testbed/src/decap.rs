//! `understudy decap` on one backend interface, as the tunnel tests run it; removed (`--stop`)
//! when dropped.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::Netns;

pub struct Decap {
    ns: String,
    binary: PathBuf,
    interface: String,
    pin_root: PathBuf,
    child: Option<Child>,
}

impl Decap {
    /// Starts `binary decap` on `interface` for the test VIPs (and `extra` arguments), and waits
    /// until its link is pinned.
    pub fn start(binary: &str, be: &Netns, interface: &str, extra: &[&str]) -> Decap {
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/understudy-decap-{}-{interface}",
            be.name()
        ));
        let child = be
            .command_net_only(binary)
            .args(["decap", "--interface", interface])
            .args(["--vip", "10.0.0.10", "--vip", "fd00::10"])
            .args(extra)
            .arg("--pin-root")
            .arg(&pin_root)
            .stdin(Stdio::null())
            .spawn()
            .expect("start understudy decap");
        let link = pin_root.join(interface).join("link");
        let deadline = Instant::now() + crate::scaled(Duration::from_secs(20));
        while !link.exists() {
            assert!(
                Instant::now() < deadline,
                "understudy decap did not pin {}",
                link.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Decap {
            ns: be.name().to_string(),
            binary: binary.into(),
            interface: interface.to_string(),
            pin_root,
            child: Some(child),
        }
    }

    /// Stops the process with SIGTERM: the pinned program keeps decapsulating.
    pub fn stop_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait for understudy decap");
            assert!(status.success(), "understudy decap exited with {status}");
        }
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(&self.binary)
            .args([
                "decap",
                "--interface",
                &self.interface,
                "--stop",
                "--pin-root",
            ])
            .arg(&self.pin_root)
            .status();
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}
