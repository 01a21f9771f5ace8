//! `--metrics ADDR`: the daemon's counters in the Prometheus text format.
//!
//! [`render`] turns a [`MetricsView`] (plain numbers, filled in by the
//! event loop from whatever it counts) into the exposition text.
//! [`spawn_server`] serves the latest text from a `watch` channel, so the
//! event loop renders when its counters change and never waits for a
//! scraper:
//!
//! ```ignore
//! let (body_tx, body_rx) = tokio::sync::watch::channel(Arc::new(String::new()));
//! let _metrics = metrics::spawn_server(TcpListener::bind(addr).await?, body_rx);
//! // ... in the loop, after counters change (or on a tick):
//! body_tx.send_replace(Arc::new(metrics::render(&view)));
//! ```
//!
//! The server answers `GET /metrics` (and `HEAD`) with HTTP/1.0 200 and the
//! current body, any other path with 404 and any other method with 405, so
//! a mistyped scrape target fails loudly instead of looking healthy. At most [`MAX_CONNECTIONS`] are served
//! at once and more are dropped as soon as they are accepted; each gets
//! [`READ_TIMEOUT`] to send its request head (at most [`MAX_HEAD`] bytes)
//! and [`WRITE_TIMEOUT`] to take the answer, so idle or slow clients hold
//! a slot for a bounded time only. Accept errors (EMFILE and the like) are
//! reported once per streak and retried after a short pause; they never
//! end the task. It runs until aborted or until its runtime shuts down.

use std::{collections::BTreeMap, fmt::Write, io, sync::Arc, time::Duration};

use super::{Histogram, noise::SourceKind};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinHandle,
    time::timeout,
};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request head read; a scraper's is a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long writing the answer may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// With `by_comm`, the comms with the most violations get a label each; the
/// rest are summed under `comm="other"`, so a storm of distinct names cannot
/// blow up the scraper's series count.
pub const TOP_COMMS: usize = 20;
const OTHER: &str = "other";
/// Pause after a failed accept: EMFILE and ENFILE do not clear at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the metrics say, independent of how the daemon keeps its counts.
#[derive(Clone, Copy, Debug)]
pub struct MetricsView<'a> {
    /// This binary's version and the running kernel's release, for
    /// `affinity_build_info`.
    pub version: &'a str,
    pub kernel: &'a str,
    /// Violations reported (records that reached the daemon); the unlabelled counter.
    pub violations: u64,
    /// Violations the programs counted, reported or rate-limited.
    pub violations_seen: u64,
    /// Per comm; read only with `by_comm`.
    pub violations_by_comm: &'a BTreeMap<String, u64>,
    /// Label `affinity_violations_total` by comm (the top [`TOP_COMMS`]).
    pub by_comm: bool,
    pub applied: u64,
    pub hotplug: u64,
    pub drops: u64,
    pub suppressed: u64,
    pub errors: u64,
    pub resyncs: u64,
    pub refused: u64,
    pub registered: usize,
    pub pinned: usize,
    pub reaction: &'a Histogram,
    /// Nanoseconds of noise per (watched CPU, source kind) since start.
    pub noise: &'a BTreeMap<(u32, SourceKind), u64>,
}

const VIOLATIONS_HELP: &str = "Runs of a kthread outside its allowed CPUs reported to the daemon (rate-limited ones are in affinity_suppressed_total; reported and rate-limited together in affinity_violations_seen_total)";

pub fn render(view: &MetricsView<'_>) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "# HELP affinity_build_info The affinity version and the kernel release it runs on.\n# TYPE affinity_build_info gauge\naffinity_build_info{{version=\"{}\",kernel=\"{}\"}} 1",
        escape(view.version),
        escape(view.kernel)
    );
    if view.by_comm {
        let _ = writeln!(
            body,
            "# HELP affinity_violations_total {VIOLATIONS_HELP}, by comm (the {TOP_COMMS} most frequent; the rest as comm=\"{OTHER}\").\n# TYPE affinity_violations_total counter"
        );
        for (comm, n) in top_comms(view.violations_by_comm, TOP_COMMS) {
            let _ = writeln!(
                body,
                "affinity_violations_total{{comm=\"{}\"}} {n}",
                escape(comm)
            );
        }
    } else {
        let _ = writeln!(
            body,
            "# HELP affinity_violations_total {VIOLATIONS_HELP}.\n# TYPE affinity_violations_total counter\naffinity_violations_total {}",
            view.violations
        );
    }
    let simple: [(&str, &str, &str, u64); 10] = [
        (
            "affinity_violations_seen_total",
            "counter",
            "Runs of a kthread outside its allowed CPUs counted by the eBPF programs, reported or rate-limited.",
            view.violations_seen,
        ),
        (
            "affinity_reapplies_total",
            "counter",
            "CPU masks applied to kthreads.",
            view.applied,
        ),
        (
            "affinity_hotplug_events_total",
            "counter",
            "CPU offline/online transitions seen.",
            view.hotplug,
        ),
        (
            "affinity_drops_total",
            "counter",
            "Events lost because the ring buffer was full.",
            view.drops,
        ),
        (
            "affinity_suppressed_total",
            "counter",
            "Violations not reported because of the per-pid rate limit.",
            view.suppressed,
        ),
        (
            "affinity_errors_total",
            "counter",
            "Errors the daemon reported and carried on from.",
            view.errors,
        ),
        (
            "affinity_resyncs_total",
            "counter",
            "Times the daemon's view of CPUs or masks was corrected from the kernel.",
            view.resyncs,
        ),
        (
            "affinity_refused_total",
            "counter",
            "Masks the kernel refused to set.",
            view.refused,
        ),
        (
            "affinity_registered_kthreads",
            "gauge",
            "Kthreads whose affinity the daemon manages.",
            view.registered as u64,
        ),
        (
            "affinity_pinned_kthreads",
            "gauge",
            "Kthreads pinned by the kernel (PF_NO_SETAFFINITY).",
            view.pinned as u64,
        ),
    ];
    for (name, kind, help, value) in simple {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let name = "affinity_hotplug_reaction_seconds";
    let _ = writeln!(
        body,
        "# HELP {name} From a CPU hotplug event in the kernel to the last kthread mask set for it.\n# TYPE {name} histogram"
    );
    for (le, n) in view.reaction.cumulative() {
        let _ = writeln!(body, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let h = view.reaction;
    let _ = writeln!(
        body,
        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
        h.count,
        h.sum_ns as f64 / 1e9,
        h.count
    );
    // Labels stay bounded: the CPUs ever watched times three kinds.
    let name = "affinity_isolated_noise_seconds_total";
    let _ = writeln!(
        body,
        "# HELP {name} Time taken on non-housekeeping CPUs by kthread runs, hard IRQ handlers and softirqs (time nested in another is counted once, for the inner one).\n# TYPE {name} counter"
    );
    for ((cpu, kind), ns) in view.noise {
        let _ = writeln!(
            body,
            "{name}{{cpu=\"{cpu}\",source_kind=\"{}\"}} {}",
            kind.name(),
            *ns as f64 / 1e9
        );
    }
    body
}

/// The `n` comms with the most violations (ties by name), in name order,
/// then the rest summed as [`OTHER`] if there is a rest. A comm that really
/// is called "other" joins the rest: two series with one label set would
/// make the whole exposition invalid.
///
/// The split is recomputed on every render, so when a comm climbs into the
/// top `n` its count leaves "other", which then goes down and reads as a
/// counter reset. Callers that need strictly monotonic series should bound
/// the map where they count (first `n` comms seen, the rest as "other").
fn top_comms(by_comm: &BTreeMap<String, u64>, n: usize) -> Vec<(&str, u64)> {
    let mut ranked: Vec<(&str, u64)> = by_comm
        .iter()
        .filter(|(c, _)| c.as_str() != OTHER)
        .map(|(c, v)| (c.as_str(), *v))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let rest = ranked.split_off(ranked.len().min(n));
    let named_other = by_comm.get(OTHER).copied();
    ranked.sort_by(|a, b| a.0.cmp(b.0));
    if !rest.is_empty() || named_other.is_some() {
        let sum = rest
            .iter()
            .map(|(_, v)| *v)
            .chain(named_other)
            .fold(0u64, u64::saturating_add);
        ranked.push((OTHER, sum));
    }
    ranked
}

/// Label values per the text format: backslash, quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    connections: usize,
    max_head: usize,
    read: Duration,
    write: Duration,
    backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: MAX_CONNECTIONS,
            max_head: MAX_HEAD,
            read: READ_TIMEOUT,
            write: WRITE_TIMEOUT,
            backoff: ACCEPT_BACKOFF,
        }
    }
}

/// Serves `body`'s latest value to every scraper; see the module docs.
/// Must be called inside a tokio runtime.
pub fn spawn_server(listener: TcpListener, body: watch::Receiver<Arc<String>>) -> JoinHandle<()> {
    spawn_server_with(listener, body, Limits::default())
}

fn spawn_server_with(
    listener: TcpListener,
    body: watch::Receiver<Arc<String>>,
    limits: Limits,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(limits.connections));
        let mut failing = false;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    failing = false;
                    // Over the limit the stream drops here: the scraper
                    // retries on its next interval.
                    if let Ok(permit) = permits.clone().try_acquire_owned() {
                        let body = body.clone();
                        tokio::spawn(async move {
                            serve(stream, &body, limits).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    if !failing {
                        eprintln!(
                            "affinity: warning: metrics endpoint: accepting a connection: {e}; retrying"
                        );
                        failing = true;
                    }
                    tokio::time::sleep(limits.backoff).await;
                }
            }
        }
    })
}

async fn serve(mut stream: TcpStream, body: &watch::Receiver<Arc<String>>, limits: Limits) {
    let head = match timeout(limits.read, read_head(&mut stream, limits.max_head)).await {
        Ok(Ok(Some(head))) => head,
        // Idle, too slow, oversized or gone: nobody to answer.
        _ => return,
    };
    let (status, extra, text, with_body) = match route(&head) {
        Route::Metrics { with_body } => (
            "200 OK",
            "",
            // Taken after the head arrived, so a slow client still gets fresh numbers.
            Arc::clone(&body.borrow()),
            with_body,
        ),
        Route::NotFound => (
            "404 Not Found",
            "",
            Arc::new("not found: the metrics are at /metrics\n".to_string()),
            true,
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            Arc::new("method not allowed: use GET\n".to_string()),
            true,
        ),
    };
    let answer = respond(&mut stream, status, extra, &text, with_body);
    let _ = timeout(limits.write, answer).await;
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { with_body: bool },
    NotFound,
    BadMethod,
}

/// What a request head asks for, from its request line alone.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/metrics" {
        Route::NotFound
    } else if method == "GET" || method == "HEAD" {
        Route::Metrics {
            with_body: method == "GET",
        }
    } else {
        Route::BadMethod
    }
}

/// Reads until the blank line that ends a request head. `Ok(None)`: the
/// client closed without sending anything, or sent more than `max` bytes.
async fn read_head(stream: &mut TcpStream, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            // A client that half-closes after a bare request line still
            // wants its answer.
            return Ok((!head.is_empty()).then_some(head));
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > max {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    extra_headers: &str,
    body: &str,
    with_body: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n{extra_headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const REACTION_BUCKETS_LEN: usize = super::super::REACTION_BUCKETS.len();

    fn reaction() -> &'static Histogram {
        static H: std::sync::OnceLock<Histogram> = std::sync::OnceLock::new();
        H.get_or_init(|| {
            let mut h = Histogram::default();
            // 300 µs, 800 µs, 2 ms and 2 s (beyond the last bucket).
            for ns in [300_000, 800_000, 2_000_000, 2_000_000_000] {
                h.observe(ns);
            }
            h
        })
    }

    fn view(by_comm: &BTreeMap<String, u64>) -> MetricsView<'_> {
        MetricsView {
            version: "0.1.0",
            kernel: "6.18.0-test",
            violations: 9,
            violations_seen: 13,
            violations_by_comm: by_comm,
            by_comm: false,
            applied: 1,
            hotplug: 2,
            drops: 3,
            suppressed: 4,
            errors: 5,
            resyncs: 6,
            refused: 7,
            registered: 10,
            pinned: 11,
            reaction: reaction(),
            noise: noise(),
        }
    }

    fn noise() -> &'static BTreeMap<(u32, SourceKind), u64> {
        static NOISE: std::sync::OnceLock<BTreeMap<(u32, SourceKind), u64>> =
            std::sync::OnceLock::new();
        NOISE.get_or_init(|| {
            BTreeMap::from([
                ((3, SourceKind::Hardirq), 4_500),
                ((3, SourceKind::Softirq), 250_000_000),
            ])
        })
    }

    #[test]
    fn renders_the_exact_text() {
        let comms = BTreeMap::from([("kswapd0".to_string(), 9)]);
        assert_eq!(
            render(&view(&comms)),
            "\
# HELP affinity_build_info The affinity version and the kernel release it runs on.
# TYPE affinity_build_info gauge
affinity_build_info{version=\"0.1.0\",kernel=\"6.18.0-test\"} 1
# HELP affinity_violations_total Runs of a kthread outside its allowed CPUs reported to the daemon (rate-limited ones are in affinity_suppressed_total; reported and rate-limited together in affinity_violations_seen_total).
# TYPE affinity_violations_total counter
affinity_violations_total 9
# HELP affinity_violations_seen_total Runs of a kthread outside its allowed CPUs counted by the eBPF programs, reported or rate-limited.
# TYPE affinity_violations_seen_total counter
affinity_violations_seen_total 13
# HELP affinity_reapplies_total CPU masks applied to kthreads.
# TYPE affinity_reapplies_total counter
affinity_reapplies_total 1
# HELP affinity_hotplug_events_total CPU offline/online transitions seen.
# TYPE affinity_hotplug_events_total counter
affinity_hotplug_events_total 2
# HELP affinity_drops_total Events lost because the ring buffer was full.
# TYPE affinity_drops_total counter
affinity_drops_total 3
# HELP affinity_suppressed_total Violations not reported because of the per-pid rate limit.
# TYPE affinity_suppressed_total counter
affinity_suppressed_total 4
# HELP affinity_errors_total Errors the daemon reported and carried on from.
# TYPE affinity_errors_total counter
affinity_errors_total 5
# HELP affinity_resyncs_total Times the daemon's view of CPUs or masks was corrected from the kernel.
# TYPE affinity_resyncs_total counter
affinity_resyncs_total 6
# HELP affinity_refused_total Masks the kernel refused to set.
# TYPE affinity_refused_total counter
affinity_refused_total 7
# HELP affinity_registered_kthreads Kthreads whose affinity the daemon manages.
# TYPE affinity_registered_kthreads gauge
affinity_registered_kthreads 10
# HELP affinity_pinned_kthreads Kthreads pinned by the kernel (PF_NO_SETAFFINITY).
# TYPE affinity_pinned_kthreads gauge
affinity_pinned_kthreads 11
# HELP affinity_hotplug_reaction_seconds From a CPU hotplug event in the kernel to the last kthread mask set for it.
# TYPE affinity_hotplug_reaction_seconds histogram
affinity_hotplug_reaction_seconds_bucket{le=\"0.0001\"} 0
affinity_hotplug_reaction_seconds_bucket{le=\"0.00025\"} 0
affinity_hotplug_reaction_seconds_bucket{le=\"0.0005\"} 1
affinity_hotplug_reaction_seconds_bucket{le=\"0.001\"} 2
affinity_hotplug_reaction_seconds_bucket{le=\"0.0025\"} 3
affinity_hotplug_reaction_seconds_bucket{le=\"0.005\"} 3
affinity_hotplug_reaction_seconds_bucket{le=\"0.01\"} 3
affinity_hotplug_reaction_seconds_bucket{le=\"0.025\"} 3
affinity_hotplug_reaction_seconds_bucket{le=\"0.05\"} 3
affinity_hotplug_reaction_seconds_bucket{le=\"0.1\"} 3
affinity_hotplug_reaction_seconds_bucket{le=\"0.25\"} 3
affinity_hotplug_reaction_seconds_bucket{le=\"1\"} 3
affinity_hotplug_reaction_seconds_bucket{le=\"+Inf\"} 4
affinity_hotplug_reaction_seconds_sum 2.0031
affinity_hotplug_reaction_seconds_count 4
# HELP affinity_isolated_noise_seconds_total Time taken on non-housekeeping CPUs by kthread runs, hard IRQ handlers and softirqs (time nested in another is counted once, for the inner one).
# TYPE affinity_isolated_noise_seconds_total counter
affinity_isolated_noise_seconds_total{cpu=\"3\",source_kind=\"hardirq\"} 0.0000045
affinity_isolated_noise_seconds_total{cpu=\"3\",source_kind=\"softirq\"} 0.25
"
        );
    }

    /// A real exposition parser (prometheus-parse) reads every sample back
    /// with its type, labels and value: what a scraper would store.
    #[test]
    fn a_prometheus_parser_reads_every_sample() {
        use prometheus_parse::{HistogramCount, Scrape, Value};
        let comms = BTreeMap::from([("kswapd0".to_string(), 5), ("kcompactd0".to_string(), 4)]);
        let text = render(&MetricsView {
            by_comm: true,
            ..view(&comms)
        });
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let one = |name: &str| {
            let found: Vec<_> = scrape.samples.iter().filter(|s| s.metric == name).collect();
            assert_eq!(found.len(), 1, "{name}: {found:?}");
            found[0]
        };
        let build = one("affinity_build_info");
        assert_eq!(build.labels.get("version"), Some("0.1.0"));
        assert_eq!(build.labels.get("kernel"), Some("6.18.0-test"));
        assert!(matches!(build.value, Value::Gauge(v) if v == 1.0));
        assert!(
            matches!(one("affinity_violations_seen_total").value, Value::Counter(v) if v == 13.0)
        );
        assert!(matches!(one("affinity_pinned_kthreads").value, Value::Gauge(v) if v == 11.0));
        let by_comm: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "affinity_violations_total")
            .map(|s| (s.labels.get("comm").unwrap().to_string(), &s.value))
            .collect();
        assert!(
            matches!(&by_comm[..], [(a, Value::Counter(x)), (b, Value::Counter(y))]
                if a == "kcompactd0" && *x == 4.0 && b == "kswapd0" && *y == 5.0),
            "{by_comm:?}"
        );
        match &one("affinity_hotplug_reaction_seconds").value {
            Value::Histogram(buckets) => {
                let got: Vec<(f64, f64)> = buckets
                    .iter()
                    .map(|HistogramCount { less_than, count }| (*less_than, *count))
                    .collect();
                assert_eq!(got.len(), REACTION_BUCKETS_LEN + 1, "{got:?}");
                assert_eq!(got[3], (0.001, 2.0));
                assert_eq!(got.last().copied(), Some((f64::INFINITY, 4.0)));
            }
            other => panic!("not a histogram: {other:?}"),
        }
        let noise: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "affinity_isolated_noise_seconds_total")
            .map(|s| {
                let Value::Counter(v) = s.value else {
                    panic!("not a counter: {s:?}")
                };
                (
                    s.labels.get("cpu").unwrap().to_string(),
                    s.labels.get("source_kind").unwrap().to_string(),
                    v,
                )
            })
            .collect();
        assert_eq!(
            noise,
            [
                ("3".into(), "hardirq".into(), 0.0000045),
                ("3".into(), "softirq".into(), 0.25)
            ]
        );
        assert_eq!(
            scrape.docs.len(),
            14,
            "a HELP line per metric: {:?}",
            scrape.docs
        );
    }

    fn violation_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("affinity_violations_total"))
            .collect()
    }

    #[test]
    fn by_comm_labels_with_escaping() {
        let comms = BTreeMap::from([
            ("a\"b".to_string(), 2),
            ("back\\slash".to_string(), 3),
            ("new\nline".to_string(), 4),
        ]);
        let text = render(&MetricsView {
            by_comm: true,
            ..view(&comms)
        });
        assert_eq!(
            violation_lines(&text),
            [
                "affinity_violations_total{comm=\"a\\\"b\"} 2",
                "affinity_violations_total{comm=\"back\\\\slash\"} 3",
                "affinity_violations_total{comm=\"new\\nline\"} 4",
            ]
        );
        assert!(text.contains("# TYPE affinity_violations_total counter"));
    }

    #[test]
    fn by_comm_keeps_the_top_twenty_and_sums_the_rest() {
        // comm00 has 1 violation, comm24 has 25.
        let comms: BTreeMap<String, u64> =
            (0..25).map(|i| (format!("comm{i:02}"), i + 1)).collect();
        let text = render(&MetricsView {
            by_comm: true,
            ..view(&comms)
        });
        let lines = violation_lines(&text);
        assert_eq!(lines.len(), 21, "{text}");
        assert_eq!(lines[0], "affinity_violations_total{comm=\"comm05\"} 6");
        assert_eq!(lines[19], "affinity_violations_total{comm=\"comm24\"} 25");
        assert_eq!(
            lines[20], "affinity_violations_total{comm=\"other\"} 15",
            "1+2+3+4+5"
        );
    }

    #[test]
    fn a_comm_called_other_joins_the_rest() {
        let comms = BTreeMap::from([("other".to_string(), 2), ("x".to_string(), 1)]);
        let text = render(&MetricsView {
            by_comm: true,
            ..view(&comms)
        });
        assert_eq!(
            violation_lines(&text),
            [
                "affinity_violations_total{comm=\"x\"} 1",
                "affinity_violations_total{comm=\"other\"} 2",
            ]
        );
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// True if the server closed `s` without sending anything.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf).await, Ok(0) | Err(_))
    }

    #[tokio::test]
    async fn idle_connections_time_out_and_later_requests_are_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Arc::new("up 1\n".to_string()));
        let limits = Limits {
            read: Duration::from_millis(300),
            ..Limits::default()
        };
        let _server = spawn_server_with(listener, rx, limits);

        let opened = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server accept them all, so they hold every slot.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let started = Instant::now();
        let mut over = TcpStream::connect(addr).await.unwrap();
        over.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        assert!(
            timeout(Duration::from_millis(200), closed(&mut over))
                .await
                .unwrap(),
            "over the limit: dropped at once, unanswered"
        );
        assert!(started.elapsed() < limits.read);

        for s in &mut idle {
            assert!(
                timeout(Duration::from_secs(2), closed(s)).await.unwrap(),
                "an idle connection is closed after the read timeout"
            );
        }
        // Accepted after `opened`, so closed by the timeout no sooner than
        // this; earlier would mean closed for some other reason.
        assert!(opened.elapsed() >= limits.read);

        tx.send_replace(Arc::new("up 2\n".to_string()));
        let answer = timeout(Duration::from_secs(2), get(addr)).await.unwrap();
        assert_eq!(
            answer,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 5\r\n\r\nup 2\n"
        );
    }

    #[tokio::test]
    async fn an_oversized_head_is_dropped_unanswered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Arc::new(String::new()));
        let _server = spawn_server(listener, rx);
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may reset the connection before all of it is sent.
        let _ = s.write_all(&vec![b'a'; MAX_HEAD + 2048]).await;
        assert!(
            timeout(Duration::from_secs(1), closed(&mut s))
                .await
                .unwrap()
        );
        // And the server is still there for the next scraper.
        assert!(get(addr).await.starts_with("HTTP/1.0 200 OK\r\n"));
    }

    #[test]
    fn requests_are_routed_by_method_and_path() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { with_body: true }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { with_body: true }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.0\r\n\r\n"),
            Route::Metrics { with_body: false }
        );
        assert_eq!(route(b"GET / HTTP/1.0\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.0\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.0\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"garbage\n\n"), Route::NotFound);
    }

    async fn ask(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn unknown_paths_get_404_and_other_methods_405() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Arc::new("up 1\n".to_string()));
        let _server = spawn_server(listener, rx);
        let nf = ask(addr, b"GET /favicon.ico HTTP/1.0\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.0 404 Not Found\r\n"), "{nf}");
        assert!(!nf.contains("up 1"), "{nf}");
        let na = ask(addr, b"POST /metrics HTTP/1.0\r\n\r\n").await;
        assert!(
            na.starts_with("HTTP/1.0 405 Method Not Allowed\r\n"),
            "{na}"
        );
        assert!(na.contains("\r\nAllow: GET, HEAD\r\n"), "{na}");
        let head = ask(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert!(head.ends_with("Content-Length: 5\r\n\r\n"), "{head}");
        assert!(get(addr).await.ends_with("\r\n\r\nup 1\n"));
    }
}
