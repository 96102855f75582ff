//! The include file BIRD reads the VIPs from: one `protocol static` per family, a /32 or /128
//! `blackhole` route per announced VIP (a route BIRD exports over BGP; the operator's filters
//! keep it out of the kernel's table, where the XDP program would not need it anyway). Empty
//! protocols when nothing is announced, so the operator's export filters always find them.

use std::{collections::BTreeSet, io, net::IpAddr, path::Path};

/// The static protocols' names, for the operator's BGP export filter
/// (`export where proto ~ "understudy*";`).
pub const PROTOCOL_V4: &str = "understudy4";
pub const PROTOCOL_V6: &str = "understudy6";

/// The file's text for `vips`, in a stable order.
pub fn render(vips: &BTreeSet<IpAddr>) -> String {
    let mut text = String::from(
        "# Written by understudy: the VIPs this node announces. Do not edit; include it from\n\
         # bird.conf and export the two protocols over BGP.\n",
    );
    for (name, channel, v4) in [(PROTOCOL_V4, "ipv4", true), (PROTOCOL_V6, "ipv6", false)] {
        text.push_str(&format!("protocol static {name} {{\n    {channel};\n"));
        for vip in vips.iter().filter(|v| v.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            text.push_str(&format!("    route {vip}/{len} blackhole;\n"));
        }
        text.push_str("}\n");
    }
    text
}

/// Writes `text` to `path` whole: a temporary file beside it, then a rename, so BIRD never reads
/// half a file.
pub fn write(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_gets_its_protocol_and_host_routes() {
        let vips: BTreeSet<IpAddr> = ["10.0.0.10", "fd00::10", "10.0.0.9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let text = render(&vips);
        let v4 = text.find("protocol static understudy4").unwrap();
        let v6 = text.find("protocol static understudy6").unwrap();
        let at = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s} missing:\n{text}"))
        };
        assert!(v4 < at("route 10.0.0.9/32 blackhole;"));
        assert!(at("route 10.0.0.9/32") < at("route 10.0.0.10/32"));
        assert!(at("route 10.0.0.10/32") < v6);
        assert!(v6 < at("route fd00::10/128 blackhole;"));
        let empty = render(&BTreeSet::new());
        assert!(empty.contains("protocol static understudy4 {\n    ipv4;\n}"));
        assert!(!empty.contains("route"));
    }
}
