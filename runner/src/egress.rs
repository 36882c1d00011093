//! The egress proxy: the only way out of a sandbox, for functions with `network: internet`.
//!
//! Sandboxes have no network of their own. The zygote runs a relay inside its sandbox
//! (`127.0.0.1:3128` → a Unix socket mounted from the host), and this proxy, in the gateway,
//! answers on that socket: HTTP `CONNECT` (HTTPS) and absolute-form HTTP requests, from
//! workers that present their function's token. It resolves names itself and connects only to
//! public addresses, to the very address it checked (no second lookup to rebind), so loopback,
//! private ranges, link-local and cloud metadata stay unreachable.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// Where workers find the relay (their `HTTP(S)_PROXY`).
pub const RELAY_ADDR: &str = "127.0.0.1:3128";
/// The socket's file name in the proxy's directory.
pub const SOCKET_NAME: &str = "egress.sock";
const MAX_HEAD: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `ip` is a public internet address a function may reach.
pub fn is_public(ip: IpAddr) -> bool {
    special_range(ip).is_none()
}

/// A range of the IANA special-purpose registries that functions may not reach.
#[derive(Debug, PartialEq)]
pub struct Special {
    pub range: Cidr,
    pub name: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, name: &'static str) -> Special {
    Special {
        range: Cidr {
            net: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        },
        name,
    }
}

const fn v6(s: [u16; 8], prefix: u8, name: &'static str) -> Special {
    Special {
        range: Cidr {
            net: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            prefix,
        },
        name,
    }
}

/// The IPv4 ranges that are not globally reachable: the IANA IPv4 Special-Purpose Address
/// Registry (RFC 6890 and successors) plus multicast. The registry's globally reachable entries
/// stay reachable (AS112 192.31.196/24 and 192.175.48/24, AMT 192.52.193/24); its two anycast
/// exceptions inside 192.0.0/24 (PCP, TURN) are refused with the block, no function needs them.
const V4_SPECIAL: &[Special] = &[
    v4(255, 255, 255, 255, 32, "limited broadcast"),
    v4(0, 0, 0, 0, 8, "\"this network\""),
    v4(10, 0, 0, 0, 8, "private-use"),
    v4(
        100,
        64,
        0,
        0,
        10,
        "shared address space (carrier-grade NAT)",
    ),
    v4(127, 0, 0, 0, 8, "loopback"),
    v4(169, 254, 0, 0, 16, "link-local (cloud metadata lives here)"),
    v4(172, 16, 0, 0, 12, "private-use"),
    v4(192, 0, 0, 0, 24, "IETF protocol assignments"),
    v4(192, 0, 2, 0, 24, "documentation (TEST-NET-1)"),
    v4(192, 88, 99, 0, 24, "6to4 relay anycast (deprecated)"),
    v4(192, 168, 0, 0, 16, "private-use"),
    v4(198, 18, 0, 0, 15, "benchmarking"),
    v4(198, 51, 100, 0, 24, "documentation (TEST-NET-2)"),
    v4(203, 0, 113, 0, 24, "documentation (TEST-NET-3)"),
    v4(224, 0, 0, 0, 4, "multicast"),
    v4(240, 0, 0, 0, 4, "reserved"),
];

/// The IPv6 ranges that are not globally reachable, from the IANA IPv6 Special-Purpose Address
/// Registry. Those outside 2000::/3 are listed for their names: nothing outside it is global
/// unicast anyway (see `GLOBAL_UNICAST`).
const V6_SPECIAL: &[Special] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    // Deprecated (RFC 4291) and, with a `sit` tunnel, sent over IPv4 to the embedded address
    // (`[::127.0.0.1]`): refused whatever it embeds.
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible (deprecated)"),
    // Local-use NAT64 prefixes embed IPv4 addresses at operator-chosen places (RFC 8215), so
    // the embedded address cannot be judged.
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local-use IPv4/IPv6 translation",
    ),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "dummy prefix"),
    // Includes Teredo (2001::/32), which tunnels over IPv4 to an address it embeds, ORCHID and
    // benchmarking; the few globally reachable anycast and AMT entries inside are refused with
    // the block, no function needs them.
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments (incl. Teredo)",
    ),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    // 6to4 (deprecated, RFC 7526) sends packets over IPv4 to the address it embeds, through
    // whatever tunnels the host has: refused whole, even for a public embedded address, since
    // no host is reachable only by 6to4 any more.
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4 (deprecated)"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
    v6(
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "segment routing (SRv6) SIDs",
    ),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
];

/// All global unicast IPv6 addresses IANA allocates are in here.
static GLOBAL_UNICAST: Special = v6(
    [0x2000, 0, 0, 0, 0, 0, 0, 0],
    3,
    "outside global unicast (2000::/3)",
);

/// The well-known NAT64 prefix (RFC 6052): the last 32 bits are the IPv4 address a NAT64
/// gateway connects to, so it is judged by that address (DNS64 hands these out for IPv4-only
/// hosts on IPv6-only networks).
const NAT64: Cidr = Cidr {
    net: IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)),
    prefix: 96,
};

/// The special-purpose range `ip` is in (`None`: a public address). IPv6 addresses that reach
/// an IPv4 address (IPv4-mapped, NAT64) are judged by that address.
pub fn special_range(ip: IpAddr) -> Option<&'static Special> {
    match ip {
        IpAddr::V4(v4) => V4_SPECIAL.iter().find(|s| s.range.covers(IpAddr::V4(v4))),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special_range(IpAddr::V4(v4));
            }
            if NAT64.covers(ip) {
                let [.., a, b, c, d] = v6.octets();
                return special_range(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
            }
            V6_SPECIAL
                .iter()
                .find(|s| s.range.covers(ip))
                .or((!GLOBAL_UNICAST.range.covers(ip)).then_some(&GLOBAL_UNICAST))
        }
    }
}

/// Whether a function may connect to `ip`: a public address, or one in a range the operator
/// allowed (`--egress-allow`).
pub fn may_reach(ip: IpAddr, allow: &[Cidr]) -> bool {
    is_public(ip) || allow.iter().any(|c| c.contains(ip))
}

/// An address range, `10.1.0.0/16` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address range like 203.0.113.0/24");
        let (ip, prefix) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = ip.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix.trim().parse().map_err(|_| bad())?
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.covers(ip)
    }

    /// Whether `ip` is in the range, taken literally.
    fn covers(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// A parsed proxy request head.
#[derive(Debug, PartialEq)]
pub struct ProxyRequest {
    /// `CONNECT` tunnels bytes; anything else is forwarded as one HTTP request.
    pub connect: bool,
    pub host: String,
    pub port: u16,
    /// The request to send upstream (origin-form, without proxy headers); empty for CONNECT.
    pub upstream_head: Vec<u8>,
    /// The token from `Proxy-Authorization: Basic base64(user:token)`.
    pub token: Option<String>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("this function may not use the network (its spec says `network: none`)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Upstream(String),
}

impl ProxyError {
    fn status(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "400 Bad Request",
            ProxyError::Unauthorized => "407 Proxy Authentication Required",
            ProxyError::Forbidden(_) => "403 Forbidden",
            ProxyError::Upstream(_) => "502 Bad Gateway",
        }
    }
}

/// Parses a request head (up to and including the blank line). Pure, for unit tests.
pub fn parse_head(head: &[u8]) -> Result<ProxyRequest, ProxyError> {
    let bad = |m: &str| ProxyError::BadRequest(m.into());
    let text = std::str::from_utf8(head).map_err(|_| bad("the request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m, t, v),
        _ => return Err(bad("expected `METHOD target HTTP/1.x`")),
    };
    let mut token = None;
    let mut kept = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("a header line has no colon"))?;
        let lname = name.trim().to_ascii_lowercase();
        if lname == "proxy-authorization" {
            token = basic_token(value.trim());
        } else if lname != "proxy-connection" && lname != "connection" {
            kept.push(line);
        }
    }
    if method == "CONNECT" {
        let (host, port) =
            split_host_port(target, None).ok_or_else(|| bad("CONNECT needs host:port"))?;
        return Ok(ProxyRequest {
            connect: true,
            host,
            port,
            upstream_head: vec![],
            token,
        });
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or_else(|| bad("expected an absolute http:// URL (use CONNECT for https)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) =
        split_host_port(authority, Some(80)).ok_or_else(|| bad("bad host in the URL"))?;
    let mut up = format!("{method} {path} {version}\r\n");
    for line in kept {
        up.push_str(line);
        up.push_str("\r\n");
    }
    // One request per connection: later requests on it could name other hosts.
    up.push_str("Connection: close\r\n\r\n");
    Ok(ProxyRequest {
        connect: false,
        host,
        port,
        upstream_head: up.into_bytes(),
        token,
    })
}

fn basic_token(value: &str) -> Option<String> {
    let b64 = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map_or(text.clone(), |(_, t)| t.to_string()),
    )
}

fn split_host_port(s: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port?,
    };
    (!host.is_empty() && port != 0).then(|| (host.to_string(), port))
}

/// The proxy: a Unix socket in `dir`, and the tokens of the functions allowed out.
pub struct EgressProxy {
    dir: PathBuf,
    /// Ranges reachable although not public (an operator's decision, e.g. an internal API).
    allow: Vec<Cidr>,
    tokens: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("dir", &self.dir)
            .finish()
    }
}

impl EgressProxy {
    /// Listens on `dir/egress.sock` (sandboxed uids must be able to connect).
    pub fn start(dir: &Path, allow: Vec<Cidr>) -> std::io::Result<Arc<Self>> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let path = dir.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        let proxy = Arc::new(EgressProxy {
            dir: dir.to_path_buf(),
            allow,
            tokens: RwLock::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&proxy);
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let Some(proxy) = weak.upgrade() else { return };
                tokio::spawn(async move { proxy.handle(conn).await });
            }
        });
        Ok(proxy)
    }

    /// The directory to mount into sandboxes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lets `label`'s workers out until the grant is dropped.
    pub fn grant(self: &Arc<Self>, label: &str) -> std::io::Result<Grant> {
        let mut bytes = [0u8; 24];
        getrandom(&mut bytes)?;
        let token = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), label.to_string());
        Ok(Grant {
            proxy: self.clone(),
            token,
        })
    }

    fn revoke(&self, token: &str) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    fn label_of(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    async fn handle(&self, mut conn: UnixStream) {
        let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)).await {
            Ok(Ok(x)) => x,
            _ => return,
        };
        match self.open(&head).await {
            Ok((req, mut upstream, label)) => {
                tracing::debug!(function = %label, host = %req.host, port = req.port, "egress");
                let ok = if req.connect {
                    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                } else {
                    upstream.write_all(&req.upstream_head).await
                };
                if ok.is_err() || upstream.write_all(&rest).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
            }
            Err(e) => {
                let body = format!("{e}\n");
                let auth = if e == ProxyError::Unauthorized {
                    "Proxy-Authenticate: Basic realm=\"skython\"\r\n"
                } else {
                    ""
                };
                let resp = format!(
                    "HTTP/1.1 {}\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    e.status(),
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        }
    }

    async fn open(&self, head: &[u8]) -> Result<(ProxyRequest, TcpStream, String), ProxyError> {
        let req = parse_head(head)?;
        let label = req
            .token
            .as_deref()
            .and_then(|t| self.label_of(t))
            .ok_or(ProxyError::Unauthorized)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((req.host.as_str(), req.port))
            .await
            .map_err(|e| ProxyError::Upstream(format!("cannot resolve {}: {e}", req.host)))?
            .collect();
        // Every address must be public: a name that also resolves inside is refused whole.
        if let Some(bad) = addrs.iter().find(|a| !may_reach(a.ip(), &self.allow)) {
            let why = special_range(bad.ip())
                .map(|s| format!(" ({}: {})", s.range, s.name))
                .unwrap_or_default();
            return Err(ProxyError::Forbidden(format!(
                "{} resolves to {}, which is not a public internet address{why}",
                req.host,
                bad.ip()
            )));
        }
        let addr = *addrs
            .first()
            .ok_or_else(|| ProxyError::Upstream(format!("{} has no address", req.host)))?;
        let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::Upstream(format!("connecting to {addr} timed out")))?
            .map_err(|e| ProxyError::Upstream(format!("connecting to {addr}: {e}")))?;
        Ok((req, upstream, label))
    }
}

/// A function's permission to go out; revoked when dropped (its pool is gone).
pub struct Grant {
    proxy: Arc<EgressProxy>,
    token: String,
}

impl Grant {
    /// The environment that points a worker's HTTP clients (requests, urllib) at the relay.
    pub fn env(&self) -> Vec<(String, String)> {
        let url = format!("http://skython:{}@{RELAY_ADDR}", self.token);
        ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
            .into_iter()
            .map(|k| (k.to_string(), url.clone()))
            .collect()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.proxy.revoke(&self.token);
    }
}

/// Reads until the blank line ending the head; returns the head and the bytes after it.
async fn read_head(conn: &mut UnixStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per special-purpose range: the range `special_range` must name, addresses
    /// inside it, and public neighbours just outside it (where the neighbour is public).
    const RANGES: &[(&str, &[&str], &[&str])] = &[
        // IPv4
        ("0.0.0.0/8", &["0.0.0.0", "0.255.255.255"], &["1.0.0.0"]),
        (
            "10.0.0.0/8",
            &["10.0.0.0", "10.1.2.3", "10.255.255.255"],
            &["9.255.255.255", "11.0.0.0"],
        ),
        (
            "100.64.0.0/10",
            &["100.64.0.0", "100.127.255.255"],
            &["100.63.255.255", "100.128.0.0"],
        ),
        (
            "127.0.0.0/8",
            &["127.0.0.1", "127.255.255.255"],
            &["126.255.255.255", "128.0.0.0"],
        ),
        (
            "169.254.0.0/16",
            &["169.254.169.254", "169.254.0.0"],
            &["169.253.255.255", "169.255.0.0"],
        ),
        (
            "172.16.0.0/12",
            &["172.16.0.1", "172.31.255.255"],
            &["172.15.255.255", "172.32.0.0"],
        ),
        (
            "192.0.0.0/24",
            &["192.0.0.0", "192.0.0.9", "192.0.0.170", "192.0.0.255"],
            &["191.255.255.255", "192.0.1.0"],
        ),
        (
            "192.0.2.0/24",
            &["192.0.2.1", "192.0.2.255"],
            &["192.0.1.255", "192.0.3.0"],
        ),
        (
            "192.88.99.0/24",
            &["192.88.99.1"],
            &["192.88.98.255", "192.88.100.0"],
        ),
        (
            "192.168.0.0/16",
            &["192.168.1.1", "192.168.255.255"],
            &["192.167.255.255", "192.169.0.0"],
        ),
        (
            "198.18.0.0/15",
            &["198.18.0.0", "198.19.255.255"],
            &["198.17.255.255", "198.20.0.0"],
        ),
        (
            "198.51.100.0/24",
            &["198.51.100.7"],
            &["198.51.99.255", "198.51.101.0"],
        ),
        (
            "203.0.113.0/24",
            &["203.0.113.80"],
            &["203.0.112.255", "203.0.114.0"],
        ),
        (
            "224.0.0.0/4",
            &["224.0.0.1", "239.255.255.255"],
            &["223.255.255.255"],
        ),
        ("240.0.0.0/4", &["240.0.0.0", "255.255.255.254"], &[]),
        ("255.255.255.255/32", &["255.255.255.255"], &[]),
        // IPv6
        ("::/128", &["::"], &[]),
        ("::1/128", &["::1"], &[]),
        (
            "::/96",
            &["::127.0.0.1", "::8.8.8.8", "::2", "::ffff:ffff"],
            &[],
        ),
        (
            "64:ff9b:1::/48",
            &["64:ff9b:1::808:808", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff"],
            &[],
        ),
        ("100::/64", &["100::", "100::ffff:ffff:ffff:ffff"], &[]),
        ("100:0:0:1::/64", &["100:0:0:1::1"], &[]),
        (
            "2001::/23",
            &[
                "2001::1",
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "2001:2::1",
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:200::1"],
        ),
        (
            "2001:db8::/32",
            &["2001:db8::1", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"],
        ),
        (
            "2002::/16",
            &[
                "2002:808:808::1",
                "2002:7f00:1::1",
                "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2003::1"],
        ),
        (
            "3fff::/20",
            &["3fff::1", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff:1000::"],
        ),
        (
            "5f00::/16",
            &["5f00::1", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &[],
        ),
        (
            "fc00::/7",
            &[
                "fc00::1",
                "fd00::1",
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &[],
        ),
        (
            "fe80::/10",
            &["fe80::1", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &[],
        ),
        (
            "ff00::/8",
            &["ff02::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &[],
        ),
        // Unallocated: only 2000::/3 is global unicast.
        (
            "2000::/3",
            &[
                "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "4000::1",
                "fec0::1",
            ],
            &["2000::1", "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
        ),
    ];

    #[test]
    fn every_special_purpose_range_is_refused_and_its_neighbours_are_not() {
        for (range, inside, outside) in RANGES {
            for ip in *inside {
                let got = special_range(ip.parse().unwrap()).map(|s| s.range.to_string());
                assert_eq!(got.as_deref(), Some(*range), "{ip}");
                assert!(!is_public(ip.parse().unwrap()), "{ip}");
            }
            for ip in *outside {
                assert!(is_public(ip.parse().unwrap()), "{ip}, next to {range}");
            }
        }
    }

    #[test]
    fn embedded_ipv4_addresses_are_judged_as_ipv4() {
        // IPv4-mapped and the well-known NAT64 prefix reach the IPv4 address they carry.
        for (ip, range) in [
            ("::ffff:127.0.0.1", Some("127.0.0.0/8")),
            ("::ffff:169.254.169.254", Some("169.254.0.0/16")),
            ("::ffff:10.0.0.1", Some("10.0.0.0/8")),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::a00:1", Some("10.0.0.0/8")),
            ("64:ff9b::7f00:1", Some("127.0.0.0/8")),
            ("64:ff9b::a9fe:a9fe", Some("169.254.0.0/16")),
            ("64:ff9b::808:808", None),
            // Just outside the well-known prefix: not global unicast.
            ("64:ff9b:0:0:0:1:808:808", Some("2000::/3")),
        ] {
            let got = special_range(ip.parse().unwrap()).map(|s| s.range.to_string());
            assert_eq!(got.as_deref(), range, "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_reachable() {
        for public in [
            "1.1.1.1",
            "151.101.0.223",
            "192.31.196.1", // AS112, globally reachable
            "192.175.48.1", // AS112 direct delegation
            "192.52.193.1", // AMT
            "2606:4700::1111",
            "2620:4f:8000::1", // AS112 direct delegation
            "2a00:1450:4001:80b::200e",
        ] {
            assert_eq!(special_range(public.parse().unwrap()), None, "{public}");
        }
    }

    #[test]
    fn allowed_ranges_are_parsed_and_matched() {
        let c: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(c.contains("203.0.113.80".parse().unwrap()));
        assert!(c.contains("::ffff:203.0.113.1".parse().unwrap()));
        assert!(!c.contains("203.0.114.1".parse().unwrap()));
        let host: Cidr = "10.0.0.5".parse().unwrap();
        assert!(
            host.contains("10.0.0.5".parse().unwrap())
                && !host.contains("10.0.0.6".parse().unwrap())
        );
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("127.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_operators_allow_list_opens_special_ranges() {
        let allow: Vec<Cidr> = ["10.0.0.0/8", "2001:db8::/32"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        for ip in ["10.1.2.3", "::ffff:10.1.2.3", "2001:db8::1", "1.1.1.1"] {
            assert!(may_reach(ip.parse().unwrap(), &allow), "{ip}");
        }
        for ip in ["127.0.0.1", "192.168.1.1", "fd00::1", "::10.1.2.3"] {
            assert!(!may_reach(ip.parse().unwrap(), &allow), "{ip}");
        }
        assert!(!may_reach("10.1.2.3".parse().unwrap(), &[]));
    }

    fn auth(token: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("fn:{token}"));
        format!("Proxy-Authorization: Basic {b64}\r\n")
    }

    #[test]
    fn connect_and_absolute_requests_are_parsed() {
        let head = format!(
            "CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n{}\r\n",
            auth("t0k")
        );
        let r = parse_head(head.as_bytes()).unwrap();
        assert_eq!(
            (r.connect, r.host.as_str(), r.port, r.token.as_deref()),
            (true, "pypi.org", 443, Some("t0k"))
        );

        let head = format!(
            "GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\n{}Proxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n",
            auth("t0k")
        );
        let r = parse_head(head.as_bytes()).unwrap();
        assert_eq!(
            (r.connect, r.host.as_str(), r.port),
            (false, "example.com", 80)
        );
        let up = String::from_utf8(r.upstream_head).unwrap();
        assert_eq!(
            up,
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        assert!(!up.contains("t0k"), "the token never goes upstream");

        let r = parse_head(b"CONNECT [2606:4700::1111]:443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.token),
            ("2606:4700::1111", 443, None)
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for head in [
            "GET / HTTP/1.1\r\n\r\n",
            "CONNECT host HTTP/1.1\r\n\r\n",
            "nonsense\r\n\r\n",
            "GET ftp://x/ HTTP/1.1\r\n\r\n",
            "CONNECT x:0 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(head.as_bytes()), Err(ProxyError::BadRequest(_))),
                "{head:?}"
            );
        }
    }
}
