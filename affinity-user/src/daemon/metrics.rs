//! `--metrics ADDR`: the daemon's counters in the Prometheus text format.

use std::fmt::Write;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::Stats;

pub struct Gauges {
    pub registered: usize,
    pub pinned: usize,
}

pub fn render(stats: &Stats, gauges: &Gauges) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "# HELP affinity_violations_total Times a kthread ran outside its allowed CPUs, by comm.\n# TYPE affinity_violations_total counter"
    );
    for (comm, n) in &stats.violations_by_comm {
        let comm = comm.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(body, "affinity_violations_total{{comm=\"{comm}\"}} {n}");
    }
    let simple: [(&str, &str, &str, u64); 7] = [
        (
            "affinity_reapplies_total",
            "counter",
            "CPU masks applied to kthreads.",
            stats.applied,
        ),
        (
            "affinity_hotplug_events_total",
            "counter",
            "CPU offline/online transitions seen.",
            stats.hotplug,
        ),
        (
            "affinity_drops_total",
            "counter",
            "Events lost because the ring buffer was full.",
            stats.drops,
        ),
        (
            "affinity_suppressed_total",
            "counter",
            "Violations not reported because of the per-pid rate limit.",
            stats.suppressed,
        ),
        (
            "affinity_errors_total",
            "counter",
            "Errors the daemon reported and carried on from.",
            stats.errors,
        ),
        (
            "affinity_registered_kthreads",
            "gauge",
            "Kthreads whose affinity the daemon manages.",
            gauges.registered as u64,
        ),
        (
            "affinity_pinned_kthreads",
            "gauge",
            "Kthreads pinned by the kernel (PF_NO_SETAFFINITY).",
            gauges.pinned as u64,
        ),
    ];
    for (name, kind, help, value) in simple {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    body
}

/// Answers one HTTP request with the metrics, whatever path it asked for.
pub async fn serve_one(mut stream: TcpStream, body: String) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut buf)).await;
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let mut stats = Stats::default();
        stats.violations_by_comm.insert("a\"b".into(), 2);
        stats.drops = 3;
        let text = render(
            &stats,
            &Gauges {
                registered: 5,
                pinned: 7,
            },
        );
        assert!(
            text.contains("affinity_violations_total{comm=\"a\\\"b\"} 2"),
            "{text}"
        );
        assert!(text.contains("affinity_drops_total 3"));
        assert!(text.contains("affinity_registered_kthreads 5"));
        assert!(text.contains("affinity_pinned_kthreads 7"));
        assert!(text.contains("# TYPE affinity_hotplug_events_total counter"));
    }
}
