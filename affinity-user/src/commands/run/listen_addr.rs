//! `--metrics`'s value.

use std::net::SocketAddr;

/// `--metrics`: an address or a host name with a port, as the user would
/// write it in a browser or a Prometheus target (`localhost:9105`).
pub(super) fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let hint = "expected HOST:PORT or IP:PORT, e.g. localhost:9105, 127.0.0.1:9105 or [::1]:9105";
    let mut addrs = s.to_socket_addrs().map_err(|e| format!("{hint} ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s} resolves to no address; {hint}"))
}

#[cfg(test)]
mod listen_addr_tests {
    use super::parse_listen_addr;

    #[test]
    fn host_names_and_addresses_are_accepted_with_a_hint_otherwise() {
        let a = parse_listen_addr("localhost:9105").unwrap();
        assert!(a.ip().is_loopback() && a.port() == 9105, "{a}");
        assert_eq!(
            parse_listen_addr("127.0.0.1:9105").unwrap().to_string(),
            "127.0.0.1:9105"
        );
        assert!(parse_listen_addr("[::1]:9105").unwrap().ip().is_loopback());
        let e = parse_listen_addr("9105").unwrap_err();
        assert!(e.contains("localhost:9105"), "{e}");
    }
}
