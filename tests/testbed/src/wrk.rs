//! What wrk printed, as numbers: one parser for the load test and the benchmarks.

/// wrk's summary. Latencies are there only when it ran with `--latency`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Wrk {
    pub requests: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// connect, read, write and timeout errors together.
    pub socket_errors: u64,
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: u64,
}

/// Reads wrk's standard output.
pub fn parse(out: &str) -> Wrk {
    let mut s = Wrk::default();
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            s.per_second = rest.trim().parse().unwrap_or(0.0);
        } else if line.contains("requests in") {
            s.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 0"
            s.socket_errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            s.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if let Some(t) = line.strip_prefix("50%") {
            s.p50_ms = millis(t.trim());
        } else if let Some(t) = line.strip_prefix("99%") {
            s.p99_ms = millis(t.trim());
        }
    }
    s
}

/// wrk's duration ("812.00us", "1.20ms", "2.00s") in milliseconds.
fn millis(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_summary_with_latencies_and_errors() {
        let out = "Running 5s test @ http://10.0.0.10/\n  1 threads and 64 connections\n\
                   \x20 Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n\
                   \x20    90%    1.50ms\n     99%    2.00s \n\
                   \x20 120000 requests in 5.00s, 10.00MB read\n\
                   \x20 Socket errors: connect 1, read 12, write 0, timeout 3\n\
                   \x20 Non-2xx or 3xx responses: 7\nRequests/sec:  24000.50\n";
        let w = super::parse(out);
        assert_eq!(w.requests, 120_000);
        assert_eq!(w.per_second, 24_000.5);
        assert_eq!(w.p50_ms, 0.812);
        assert_eq!(w.p99_ms, 2000.0);
        assert_eq!((w.socket_errors, w.non_2xx), (16, 7));
    }
}
