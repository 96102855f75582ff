//! `GET /`: a status page in the spirit of HAProxy's stats page, readable without JavaScript:
//! services, their state and tier in use, and every backend with its tier, weight, health, last
//! change and counters. It refreshes itself every 5 seconds. Rows carry `data-` attributes so
//! scripts and tests need not parse the text.

use std::fmt::Write as _;

use html_escape::encode_text as esc;

use crate::status::Snapshot;

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
th{background:#eee}.up{background:#dfd}.down{background:#fdd}.draining{background:#ffd}\
h2{margin-bottom:.3em}.muted{color:#777}";

fn when(unix: Option<u64>) -> String {
    let Some(t) = unix else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(t, |d| d.as_secs());
    format!("{}s ago", now.saturating_sub(t))
}

pub fn render(s: &Snapshot) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>Understudy status</title><style>{STYLE}</style></head><body><h1>Understudy</h1>\
         <p class=\"muted\">{} health changes; decision to visible p50 {} µs, p99 {} µs</p>",
        s.changes, s.decision_to_visible.p50_us, s.decision_to_visible.p99_us
    );
    for (interface, n) in s.redirect_drops.iter().filter(|(_, n)| **n > 0) {
        let _ = write!(
            h,
            "<p class=\"alert\" data-redirect-drops=\"{interface}\"><b>{n} frames redirected into              {interface} were dropped by the kernel</b> (the daemon's log says why)</p>",
            interface = esc(interface),
        );
    }
    if !s.flood.cpus.is_empty() {
        let _ = write!(
            h,
            "<p class=\"alert\" data-flood-cpus=\"{n}\"><b>SYN-flood mode on {n} CPU(s)</b>: new SYN \
             flows pass {t} per second per CPU and are not written to the flow table</p>",
            n = s.flood.cpus.len(),
            t = s.flood.threshold,
        );
    }
    for svc in &s.services {
        if !svc.refused.is_empty() {
            let reasons: Vec<String> = svc
                .refused
                .iter()
                .map(|(r, n)| format!("{} {n}", esc(r)))
                .collect();
            let _ = write!(
                h,
                "<p class=\"muted\" data-refused=\"{name}\">{name} refused: {}</p>",
                reasons.join(", "),
                name = esc(&svc.name),
            );
        }
    }
    for svc in &s.services {
        let tier = svc
            .tier_in_use
            .map_or("none".to_string(), |t| t.to_string());
        let _ = write!(
            h,
            "<h2 id=\"service-{name}\">{name}</h2><p data-service=\"{name}\" data-state=\"{state}\">\
             {vip}/{proto}: <b>{state}</b>, tier in use {tier}; {flows} flows, {packets} packets</p>\
             <table><tr><th>Backend</th><th>Tier</th><th>Weight</th><th>Health</th><th>New flows</th>\
             <th>Packets</th><th>Last 10 min</th><th>Last check</th><th>Last change</th></tr>",
            name = esc(&svc.name),
            state = svc.state,
            vip = esc(&svc.vip),
            proto = svc.protocol,
            flows = svc.traffic.new_flows,
            packets = svc.traffic.packets,
        );
        for b in &svc.backends {
            let health = if b.draining {
                "draining"
            } else if b.healthy {
                "up"
            } else {
                "down"
            };
            let _ = write!(
                h,
                "<tr class=\"backend {health}\" data-backend=\"{addr}\" data-health=\"{health}\" \
                 data-active=\"{active}\"><td>{addr}</td><td>{tier}</td><td>{weight}</td><td>{health}{taking}</td>\
                 <td>{flows}</td><td>{packets}</td><td>{spark}</td><td>{check}</td><td>{change}</td></tr>",
                addr = esc(&b.address),
                active = b.active,
                tier = b.tier,
                weight = b.weight,
                // A drain is the operator's word: it outranks a pending first check.
                taking = match (b.draining, b.waiting_for_first_check, b.active) {
                    (false, true, _) => " (waiting for first check)".to_string(),
                    (false, false, true) => b
                        .slow_start_percent
                        .map_or(String::new(), |p| format!(" (slow start {p}%)")),
                    _ => " (no new flows)".to_string(),
                },
                flows = b.traffic.new_flows,
                packets = b.traffic.packets,
                spark = sparkline(&b.history),
                check = match (&b.last_check_ok, &b.last_check) {
                    (Some(ok), Some(why)) => format!(
                        "{} ({}), {}",
                        if *ok { "passed" } else { "failed" },
                        esc(why),
                        when(b.last_check_at)
                    ),
                    _ => "-".to_string(),
                },
                change = match &b.last_change {
                    Some(why) => format!("{}, {}", esc(why), when(b.last_change_at)),
                    None => "-".to_string(),
                },
            );
        }
        h.push_str("</table>");
        if !svc.routes.is_empty() {
            h.push_str(
                "<table><tr><th>Route</th><th>Matches</th><th>Pools</th><th>Serving from</th>\
                 <th>Auth</th><th>Rate limit</th><th>Requests</th><th>5xx</th><th>Refused</th></tr>",
            );
            for r in &svc.routes {
                let moved = r.serving != r.pools[0];
                let _ = write!(
                    h,
                    "<tr class=\"route{cls}\" data-route=\"{name}\" data-serving=\"{serving}\">\
                     <td>{name}</td><td>{matches}</td><td>{pools}</td><td>{serving}{why}</td>\
                     <td class=\"auth\">{auth}</td><td class=\"limit\">{limit}</td>\
                     <td>{requests}</td><td>{errors}</td><td>{refused}</td></tr>",
                    cls = if moved { " draining" } else { "" },
                    name = esc(&r.name),
                    matches = esc(&r.matches),
                    pools = esc(&r.pools.join(" → ")),
                    serving = esc(&r.serving),
                    why = r
                        .reason
                        .as_ref()
                        .map_or(String::new(), |w| format!(" ({})", esc(w))),
                    auth = esc(&r.auth),
                    limit = esc(r.rate_limit.as_deref().unwrap_or("-")),
                    requests = r.requests,
                    errors = r.server_errors,
                    refused = r.refused,
                );
            }
            h.push_str("</table>");
        }
    }
    h.push_str("</body></html>");
    h
}

/// A backend's last ten minutes as an inline SVG (no script): new flows per step as a step line,
/// right-aligned at now, and each health change as a vertical mark (red down, green up) with
/// its time in a tooltip.
fn sparkline(h: &crate::status::BackendHistory) -> String {
    const W: f64 = 160.0;
    const H: f64 = 28.0;
    let window = 600.0;
    let step = f64::from(h.step_secs.max(1));
    let max = h.new_flows.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = h.new_flows.len();
    // A step chart: each step a level from its start to its end, the last one ending at now.
    let dx = step / window * W;
    let points: Vec<String> = h
        .new_flows
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            let end = W - (n - 1 - i) as f64 * dx;
            let y = H - 2.0 - *v as f64 / max * (H - 4.0);
            [
                format!("{:.1},{y:.1}", (end - dx).max(0.0)),
                format!("{:.1},{y:.1}", end.max(0.0)),
            ]
        })
        .collect();
    let mut svg = format!(
        "<svg class=\"history\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         data-points=\"{n}\" data-peak=\"{peak}\" data-changes=\"{changes}\" role=\"img\">\
         <title>new flows per {step} s over the last 10 minutes; peak {peak}</title>\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#f6f6f6\"/>",
        peak = max as u64 * u64::from(!h.new_flows.iter().all(|v| *v == 0)),
        changes = h.changes.len(),
    );
    for c in &h.changes {
        let x = W - f64::from(c.secs_ago) / window * W;
        let (color, what) = if c.up {
            ("#2a2", "up")
        } else {
            ("#c22", "down")
        };
        let _ = write!(
            svg,
            "<line class=\"change {what}\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"0\" y2=\"{H}\" \
             stroke=\"{color}\" stroke-width=\"2\"><title>{what} {ago} s ago</title></line>",
            ago = c.secs_ago,
        );
    }
    if n > 0 {
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"#246\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use crate::status::{BackendHistory, HistoryChange};

    #[test]
    fn the_sparkline_draws_each_step_and_marks_each_change() {
        let svg = super::sparkline(&BackendHistory {
            step_secs: 10,
            new_flows: vec![0, 40, 20],
            changes: vec![
                HistoryChange {
                    secs_ago: 300,
                    up: false,
                },
                HistoryChange {
                    secs_ago: 15,
                    up: true,
                },
            ],
        });
        assert!(
            svg.contains("data-points=\"3\" data-peak=\"40\" data-changes=\"2\""),
            "{svg}"
        );
        // Right-aligned: the last step ends at now (x = 160); the peak is at the top.
        assert!(
            svg.contains(
                "points=\"152.0,26.0 154.7,26.0 154.7,2.0 157.3,2.0 157.3,14.0 160.0,14.0\""
            ),
            "{svg}"
        );
        assert!(svg.contains("class=\"change down\" x1=\"80.0\""), "{svg}");
        assert!(svg.contains("<title>up 15 s ago</title>"), "{svg}");
        let empty = super::sparkline(&BackendHistory::default());
        assert!(
            empty.contains("data-points=\"0\"") && !empty.contains("polyline"),
            "{empty}"
        );
    }
}
