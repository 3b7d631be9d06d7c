//! The parsers: one per kind of value. Each takes the value as written (already trimmed unless
//! secret) and returns what is wrong as a phrase that follows the setting's name:
//! `"3 days" is not a duration (write …)`. Parsers of secrets never quote their input.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{CorsOrigins, LogFormat};
use crate::secret::{ApiKey, Secret};

/// Longest duration accepted anywhere. Far beyond any sensible TTL or timeout, and far below
/// what the cache (moka refuses TTLs over 1000 years) or `Instant` arithmetic would choke on.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);
/// A key file larger than this is not a key file (and reading stops there: think `/dev/zero`).
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

pub fn read_key_file(path: &Path) -> Result<ApiKey, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {path:?} ({e})"))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!("{path:?} is too large to hold an API key"));
    }
    // Secret mounts and `echo key > file` end with a newline; it is not part of the key.
    parse_api_key(text.trim_end()).map_err(|problem| format!("the key in {path:?} {problem}"))
}

pub(super) fn parse_api_key(value: &str) -> Result<ApiKey, &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    // It goes into an `Authorization` header; only visible ASCII is safe there.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("contains characters not allowed in an HTTP header \
                    (only visible ASCII, no spaces or newlines)");
    }
    Ok(ApiKey::new(value))
}

/// `250ms`, `30s`, `5m`, `24h`, `7d`, or a bare `0`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("{value:?} is not a duration (write 250ms, 30s, 5m or 24h)");
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => return Err(bad()),
    };
    match duration {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("{value:?} is too long (at most 3650d)")),
    }
}

/// A duration where 0 would be meaningless (a timeout that always fires, a busy poll loop).
pub(super) fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        Duration::ZERO => Err(format!("{value:?} must be more than 0 (e.g. 500ms or 10s)")),
        d => Ok(d),
    }
}

/// `64MiB`, `512KiB`, `1GiB`, `10MB` (decimal), `100B`, or bare bytes.
pub(super) fn parse_size(value: &str) -> Result<u64, String> {
    let bad =
        || format!("{value:?} is not a size (write 512KiB, 64MiB, 1GiB, 10MB or a byte count)");
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("{value:?} is too large"))
}

pub(super) fn parse_max_body(value: &str) -> Result<usize, String> {
    match usize::try_from(parse_size(value)?) {
        Ok(0) => Err(format!("{value:?} must be at least 1 byte")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{value:?} is too large")),
    }
}

/// A count where 0 would be meaningless (no connections, no fetches, no watches).
pub(super) fn parse_count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{value:?} is not a whole number of at least 1")),
    }
}

pub(super) fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{value:?} is not a rate (write requests per second, e.g. 20 or 2.5; 0 is off)"
        )),
    }
}

pub(super) fn parse_burst(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(b) if b.is_finite() && b >= 1.0 => Ok(b),
        _ => Err(format!(
            "{value:?} is not a bucket size (write a number of at least 1)"
        )),
    }
}

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{value:?} is not a boolean (write true or false)")),
    }
}

pub(super) fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("{value:?} is not an address (write ip:port, e.g. 127.0.0.1:8080 or [::]:8080)")
    })
}

pub(super) fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value.to_ascii_lowercase().as_str() {
        "json" => Ok(LogFormat::Json),
        "pretty" => Ok(LogFormat::Pretty),
        _ => Err(format!(
            "{value:?} is not a log format (write json or pretty)"
        )),
    }
}

/// Checked here so a typo is a startup error rather than a silently different filter.
pub(super) fn parse_log(value: &str) -> Result<String, String> {
    let expected = "write e.g. info or taskgate=debug,warn";
    if value.is_empty() {
        return Err(format!("empty ({expected})"));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("{value:?} is not a log filter ({e}; {expected})"))
}

/// An absolute `https` URL, or `http` to loopback only: the API key travels in a header, and
/// plain http elsewhere would send it in clear.
pub(super) fn parse_upstream_url(value: &str) -> Result<String, String> {
    // Checked before anything quotes the value: it could be `https://user:password@host`.
    if value.contains('@') {
        return Err("must not contain user:password@ (the key is sent as a header)".into());
    }
    let expected = "write an absolute URL such as https://livepeer.studio/api";
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("{value:?} is not a URL ({expected})"))?;
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(format!("{value:?} is not an absolute URL ({expected})"));
    };
    if uri.query().is_some() || value.contains('#') {
        return Err(format!("{value:?} must not have a query or fragment"));
    }
    match scheme {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(format!(
                "{value:?} would send the API key in clear: use https (http only to loopback)"
            ))
        }
        _ => return Err(format!("{value:?} is not an https URL ({expected})")),
    }
    Ok(value.trim_end_matches('/').to_owned())
}

fn is_loopback(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checked at load time so a wrong mount fails at startup, not at the first upstream call.
pub(super) fn parse_ca_file(value: &str) -> Result<Option<PathBuf>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read_to_string(value).map_err(|e| format!("cannot read {value:?} ({e})"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{value:?} holds no PEM certificate"));
    }
    Ok(Some(value.into()))
}

/// Empty = none, `*` = any, else a comma list of exact origins.
pub(super) fn parse_cors_origins(value: &str) -> Result<CorsOrigins, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    match entries.as_slice() {
        [] => Ok(CorsOrigins::None),
        ["*"] => Ok(CorsOrigins::Any),
        _ => entries
            .iter()
            .map(|e| parse_origin(e))
            .collect::<Result<_, _>>()
            .map(CorsOrigins::List),
    }
}

/// `scheme://host[:port]`, lower-cased because browsers send the `Origin` header that way; or
/// a pattern `scheme://*.domain[:port]` (see [`parse_origin_pattern`]).
pub(super) fn parse_origin(entry: &str) -> Result<String, String> {
    if entry.contains('*') && entry != "*" {
        return parse_origin_pattern(entry);
    }
    let bad = |why: &str| {
        format!("{entry:?} is not an origin ({why}; write scheme://host[:port], e.g. https://app.example.com)")
    };
    if entry == "*" {
        return Err("\"*\" cannot be combined with other origins".into());
    }
    let uri: http::Uri = entry.parse().map_err(|_| bad("not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(bad("not absolute"));
    };
    if !matches!(scheme, "http" | "https") || authority.as_str().contains('@') {
        return Err(bad("http or https, no user"));
    }
    let origin = format!("{scheme}://{authority}").to_ascii_lowercase();
    if origin != entry.to_ascii_lowercase() {
        return Err(bad("no path, query or trailing slash"));
    }
    Ok(origin)
}

/// `scheme://*.domain[:port]`: any subdomain of `domain` (at any depth, never `domain`
/// itself) with that scheme and port (none = the scheme's default, as browsers write it).
/// `domain` has at least two labels, so `https://*.com` is refused.
fn parse_origin_pattern(entry: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "{entry:?} is not an origin pattern ({why}; write scheme://*.domain[:port], e.g. \
             https://*.example.com)"
        )
    };
    let lower = entry.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    let rest = rest
        .strip_prefix("*.")
        .ok_or_else(|| bad("the * must be the whole first label"))?;
    let (domain, port) = match rest.split_once(':') {
        Some((domain, port)) => (domain, Some(port)),
        None => (rest, None),
    };
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !ok {
            return Err(bad("the port is not a number from 1 to 65535"));
        }
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad(
            "after *. comes a domain of at least two labels, with no path, * or trailing dot",
        ));
    }
    Ok(lower)
}

/// Empty = off. Syntax only (no connection, no client: start-up's Redis client has the last
/// word, and `--check-config` builds it too). The value is never quoted: it can hold a password.
pub(super) fn parse_redis_url(value: &str) -> Result<Option<Secret>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    check_redis_url(value).map_err(|why| {
        format!(
            "the value (hidden) is not a Redis URL ({why}; write redis://host:port/db or \
             rediss://host:port/db)"
        )
    })?;
    Ok(Some(Secret::new(value)))
}

/// `redis[s]://[user][:password@]host[:port][/db][?name=value&…]`. What is wrong, as a phrase
/// that never quotes any part of the value.
fn check_redis_url(value: &str) -> Result<(), &'static str> {
    let rest = value
        .strip_prefix("redis://")
        .or_else(|| value.strip_prefix("rediss://"))
        .ok_or("the scheme must be redis:// or rediss://")?;
    if rest.contains('#') {
        return Err("no #fragment: TLS verification cannot be turned off");
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => {
            check_userinfo(userinfo)?;
            host_port
        }
        None => authority,
    };
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (ip, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ]")?;
            ip.parse::<std::net::Ipv6Addr>()
                .map_err(|_| "the host in [ ] is not an IPv6 address")?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or("junk after the IPv6 host")?),
            };
            (ip, port)
        }
        None => {
            let (host, port) = match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            };
            let name_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
            if !host.bytes().all(name_char) {
                return Err("the host is not a name or an IP address");
            }
            (host, port)
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err("the port is not a number from 1 to 65535"),
        }
    }
    let db = path.strip_prefix('/').unwrap_or(path);
    if !db.is_empty() && (!db.bytes().all(|b| b.is_ascii_digit()) || db.parse::<u32>().is_err()) {
        return Err("the path must be a database number, like /0");
    }
    if let Some(query) = query {
        let pair_ok = |pair: &str| {
            pair.split_once('=')
                .is_some_and(|(name, _)| !name.is_empty())
                && pair.bytes().all(|b| b.is_ascii_graphic())
        };
        if !query.split('&').all(pair_ok) {
            return Err("the query must be name=value pairs");
        }
    }
    Ok(())
}

/// `user`, `user:password` or `:password`, percent-encoded where needed.
fn check_userinfo(userinfo: &str) -> Result<(), &'static str> {
    let bytes = userinfo.as_bytes();
    if !bytes.iter().all(u8::is_ascii_graphic) {
        return Err("the user or password holds spaces or characters that need %-encoding");
    }
    for (i, _) in userinfo.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err("the user or password has a % that is not %-encoding (write %25)");
        }
    }
    Ok(())
}

/// Empty = none. The path of a secret file; read (and re-read) by the secrets store, which
/// names this setting when it cannot.
pub(super) fn parse_secret_file(value: &str) -> Result<Option<PathBuf>, String> {
    Ok((!value.is_empty()).then(|| PathBuf::from(value)))
}

/// Empty = unset. Taken byte for byte; never quoted.
pub(super) fn parse_optional_secret(value: &str) -> Result<Option<Secret>, String> {
    if value.trim().is_empty() != value.is_empty() {
        return Err("is only whitespace".into());
    }
    Ok((!value.is_empty()).then(|| Secret::new(value)))
}

/// Empty = the webhook route is off (the default).
pub(super) fn parse_webhook_secret(value: &str) -> Result<Option<Secret>, String> {
    Ok((!value.is_empty()).then(|| Secret::new(value)))
}

/// Empty = derived. Otherwise it becomes part of every Redis key: `[A-Za-z0-9_.-]{1,64}`.
pub(super) fn parse_redis_namespace(value: &str) -> Result<Option<String>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let ok = value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(format!(
            "{value:?} is not a namespace (1 to 64 of A-Z a-z 0-9 _ . -)"
        ));
    }
    Ok(Some(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pw-TEST-SHOULD-NEVER-PRINT";

    #[test]
    fn redis_urls_of_every_documented_shape_are_accepted() {
        for url in [
            "redis://cache".to_owned(),
            "redis://cache:6379".to_owned(),
            "redis://cache:6379/".to_owned(),
            "redis://cache:6379/0".to_owned(),
            "rediss://cache.internal.example:6380/15".to_owned(),
            "redis://10.0.0.5:6379/0".to_owned(),
            "redis://[::1]:6379/0".to_owned(),
            "redis://[fd00::5]".to_owned(),
            "redis://default@cache:6379".to_owned(),
            format!("redis://:{PASSWORD}@cache:6379/0"),
            format!("rediss://default:{PASSWORD}@cache:6380/0"),
            "redis://user:p%40ss%2Fw0rd@cache".to_owned(),
            "redis://cache:6379/0?protocol=resp3".to_owned(),
        ] {
            let got = parse_redis_url(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(got.map(|s| s.expose().to_owned()), Some(url));
        }
        assert_eq!(parse_redis_url(""), Ok(None), "empty is off");
    }

    #[test]
    fn malformed_redis_urls_are_refused_without_quoting_them() {
        for (url, why) in [
            (format!("http://:{PASSWORD}@cache:6379"), "scheme"),
            (format!("REDIS://:{PASSWORD}@cache"), "scheme"),
            ("redis://".to_owned(), "no host"),
            (format!("redis://:{PASSWORD}@"), "no host"),
            (format!("redis://:{PASSWORD}@:6379/0"), "no host"),
            (format!("redis://:{PASSWORD}@cache:notaport/0"), "port"),
            (format!("redis://:{PASSWORD}@cache:0"), "port"),
            (format!("redis://:{PASSWORD}@cache:65536"), "port"),
            (format!("redis://:{PASSWORD}@cache:+6379"), "port"),
            (
                format!("redis://:{PASSWORD}@cache:6379/db0"),
                "database number",
            ),
            (
                format!("redis://:{PASSWORD}@cache:6379/0/1"),
                "database number",
            ),
            (format!("redis://:{PASSWORD}@ca che:6379"), "host"),
            (format!("redis://:{PASSWORD}@[::1:6379"), "closing ]"),
            (format!("redis://:{PASSWORD}@[nope]:6379"), "IPv6"),
            (format!("redis://:{PASSWORD}@[::1]6379"), "junk"),
            (format!("redis://:{PASSWORD} x@cache"), "%-encoding"),
            (format!("redis://:{PASSWORD}%zz@cache"), "%-encoding"),
            (format!("rediss://:{PASSWORD}@cache/#insecure"), "fragment"),
            (format!("redis://:{PASSWORD}@cache/0?resp3"), "name=value"),
        ] {
            let e = parse_redis_url(&url).expect_err(&url);
            assert!(
                e.starts_with("the value (hidden) is not a Redis URL ("),
                "{e}"
            );
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains(PASSWORD), "{e}");
        }
    }
}
