//! Service signatures: which DNS names and IP prefixes belong to which named service.
//!
//! What it does:
//! - parses the versioned TOML signature format (documented at the top of
//!   `signatures/services.toml`, which is also [`BUILTIN_SIGNATURES`]) and reports every problem
//!   as `FILE:LINE:COL: message`, with the position of the offending value;
//! - validates domains (LDH labels plus `_`, at most 253 characters), regexes (the `regex`
//!   crate's syntax) and prefixes (`ipnet` CIDRs; a bare address is a /32 or /128 host prefix;
//!   host bits below the prefix length are **accepted and cleared**, so `192.0.2.1/24` means
//!   `192.0.2.0/24`);
//! - compiles the set into indexes so that [`Signatures::match_name`] costs one hash lookup per
//!   label of the name plus one [`regex::RegexSet`] scan, and [`Signatures::match_addr`] one
//!   hash lookup per distinct prefix length present.
//!
//! What it does not do: it does not resolve names, does not follow CNAMEs (that is
//! [`crate::DnsCache`]) and does not interpret internationalised names (IDNs must be written in
//! their ASCII `xn--` form). Service names are kept as written for display; every lookup by
//! name is case-insensitive.
//!
//! # File format (version 1)
//!
//! ```toml
//! # service-traceroute service signatures
//! format = 1                  # required; the only version this crate reads is 1
//!
//! [[service]]                 # any number of services
//! name = "YouTube"            # required, unique in the file (case-insensitive)
//! domains = ["youtube.com", "ytimg.com", "googlevideo.com"]
//! regexes = ['r[0-9]+---sn-[a-z0-9-]+\.googlevideo\.com']
//! prefixes = ["208.65.152.0/22", "2001:db8::/32", "192.0.2.7"]
//! ```
//!
//! - `domains`: name suffixes matched on label boundaries, case-insensitively, a trailing dot
//!   ignored: `example.test` matches `example.test` and `video.example.test`, never
//!   `badexample.test`. No wildcards (`*.example.test` is an error: `example.test` already
//!   covers it), no URLs.
//! - `regexes`: `regex` crate syntax, matched case-insensitively against the whole lower-cased
//!   name without its trailing dot: each is compiled as `^(?:REGEX)$`, so `^`/`$` are optional
//!   and a regex cannot match in the middle of a name. A regex must compile on its own (so
//!   `a)|(b` cannot escape the anchors).
//! - `prefixes`: IPv4/IPv6 CIDRs; a bare address is a /32 or /128; host bits are cleared.
//! - A service needs at least one domain, regex or prefix; unknown keys are errors.
//!
//! Precedence: [`Signatures::match_name`] takes the longest matching domain suffix over all
//! services; only if none matches, the first service in file order whose regex matches.
//! [`Signatures::match_addr`] takes the longest matching prefix (IPv4-mapped IPv6 addresses
//! are matched as IPv4). A domain or prefix listed by two services belongs to the first.
//!
//! Errors ([`SignatureError`]) name the file, the line and column of the offending value and
//! the problem, on one line, e.g. ``services.toml:12:5: invalid domain `a..b`: empty label``.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use regex::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;
use toml::Spanned;

/// The signature file format version this crate reads (the `format = 1` key).
pub const FORMAT_VERSION: u32 = 1;

/// The signatures shipped with the crate: the services of the original Service Traceroute tool.
pub const BUILTIN_SIGNATURES: &str = include_str!("../signatures/services.toml");

/// Origin used in errors about the builtin file.
const BUILTIN_ORIGIN: &str = "<builtin services.toml>";

/// Compiled regexes may not grow beyond this (bytes of the compiled program), so a hostile file
/// cannot make the matcher huge.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A problem in a signature file or a programmatic signature.
///
/// Displays as `FILE:LINE:COL: message`, `FILE:LINE: message` or `FILE: message`, depending on
/// how much of the position is known. Lines and columns count from 1; columns count characters.
/// The message is always a single line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SignatureError {
    /// The file (or other origin given by the caller) the problem is in.
    pub origin: String,
    /// 1-based line of the offending value, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending value, when known.
    pub column: Option<usize>,
    /// What is wrong, on one line.
    pub message: String,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.origin, l, c, self.message),
            (Some(l), None) => write!(f, "{}:{}: {}", self.origin, l, self.message),
            _ => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl SignatureError {
    fn new(origin: &str, message: impl Into<String>) -> Self {
        SignatureError {
            origin: origin.to_string(),
            line: None,
            column: None,
            message: one_line(&message.into()),
        }
    }

    fn at(origin: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        SignatureError {
            origin: origin.to_string(),
            line: Some(line),
            column: Some(column),
            message: one_line(&message.into()),
        }
    }
}

/// Converts a byte offset into a 1-based (line, column-in-characters) pair. Offsets past the
/// end (or inside a character) are clamped.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Squeezes a possibly multi-line message onto one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// One service as written by a user or a program, before validation.
///
/// The same shape as a `[[service]]` table of the file format.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceSpec {
    /// Display name.
    pub name: String,
    /// Domain suffixes.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Regexes matched against the whole lower-cased name.
    #[serde(default)]
    pub regexes: Vec<String>,
    /// IPv4/IPv6 CIDRs or bare addresses.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

/// One validated service of a [`Signatures`] set.
#[derive(Debug, Clone)]
pub struct Service {
    /// Display name, as written.
    pub name: String,
    /// Normalised domain suffixes (lower case, no trailing dot).
    pub domains: Vec<String>,
    /// Regex sources, as written (they are compiled anchored and case-insensitive).
    pub regexes: Vec<String>,
    /// Prefixes, with host bits cleared.
    pub prefixes: Vec<IpNet>,
    shared_name: Arc<str>,
}

impl Service {
    /// The display name as a cheaply clonable string (what [`crate::ServiceMatch`] carries).
    pub fn shared_name(&self) -> &Arc<str> {
        &self.shared_name
    }

    fn from_parts(
        name: String,
        domains: Vec<String>,
        regexes: Vec<String>,
        prefixes: Vec<IpNet>,
    ) -> Self {
        let shared_name = Arc::from(name.as_str());
        Service {
            name,
            domains,
            regexes,
            prefixes,
            shared_name,
        }
    }
}

/// A compiled set of service signatures.
///
/// Built from TOML ([`Signatures::from_toml_str`], [`Signatures::load`],
/// [`Signatures::builtin`]) or programmatically ([`Signatures::add`]); queried per packet with
/// [`Signatures::match_name`] and [`Signatures::match_addr`].
#[derive(Debug, Clone, Default)]
pub struct Signatures {
    services: Vec<Service>,
    /// Lower-cased service name -> index.
    by_name: HashMap<String, usize>,
    /// Domain suffix -> index of the first service listing it.
    domains: HashMap<Box<str>, usize>,
    /// All regexes, anchored, in service order.
    regex_set: Option<RegexSet>,
    /// Pattern index of `regex_set` -> service index.
    regex_owner: Vec<usize>,
    /// IPv4 prefixes grouped by length, longest first: (length, masked address -> service).
    v4: Vec<(u8, HashMap<u32, usize>)>,
    /// IPv6 prefixes grouped by length, longest first.
    v6: Vec<(u8, HashMap<u128, usize>)>,
}

// ---- the file format -------------------------------------------------------------------

/// First pass: only the format key, so that a file of a newer format is reported as such and
/// not as a pile of unknown keys.
#[derive(Deserialize)]
struct FormatProbe {
    format: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    #[allow(dead_code)] // checked by FormatProbe
    format: toml::Value,
    #[serde(default)]
    service: Vec<ServiceRepr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceRepr {
    name: Spanned<String>,
    #[serde(default)]
    domains: Vec<Spanned<String>>,
    #[serde(default)]
    regexes: Vec<Spanned<String>>,
    #[serde(default)]
    prefixes: Vec<Spanned<String>>,
}

fn toml_error(origin: &str, text: &str, e: &toml::de::Error) -> SignatureError {
    match e.span() {
        Some(span) => SignatureError::at(origin, text, span.start, e.message()),
        None => SignatureError::new(origin, e.message()),
    }
}

// ---- validation of single values ---------------------------------------------------------

/// Normalises and validates a domain suffix: ASCII letters, digits, `-` and `_` in labels of
/// 1..=63 characters, at most 253 characters in all (RFC 1035 §2.3.4, RFC 2181 §11), one
/// trailing dot ignored, lower-cased.
fn normalize_domain(raw: &str) -> Result<String, String> {
    if raw.contains("://") || raw.contains('/') {
        return Err(format!(
            "invalid domain `{raw}`: write a bare domain name such as `example.com`, not a URL"
        ));
    }
    if let Some(rest) = raw.strip_prefix("*.") {
        return Err(format!(
            "invalid domain `{raw}`: no wildcards; `{rest}` already matches every name under it"
        ));
    }
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() {
        return Err("invalid domain: empty".to_string());
    }
    if name.len() > 253 {
        return Err(format!(
            "invalid domain `{raw}`: {} characters, at most 253 are allowed",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("invalid domain `{raw}`: empty label"));
        }
        if label.len() > 63 {
            return Err(format!(
                "invalid domain `{raw}`: label `{label}` is longer than 63 characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "invalid domain `{raw}`: character {c:?} (allowed: letters, digits, '-', '_', '.')"
            ));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// Checks a regex on its own (so that `a)|(b` cannot escape the anchoring wrapper) and returns
/// the anchored source.
fn anchored_regex(raw: &str) -> Result<String, String> {
    let check = |src: &str| {
        RegexBuilder::new(src)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(|_| ())
            .map_err(|e| regex_message(raw, &e))
    };
    if raw.is_empty() {
        return Err("invalid regex: empty".to_string());
    }
    check(raw)?;
    let anchored = format!("^(?:{raw})$");
    check(&anchored)?;
    Ok(anchored)
}

fn regex_message(raw: &str, e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => {
            // The regex crate prints the pattern, a caret line and "error: <what>"; keep <what>.
            let what = s
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error:"))
                .map(str::trim)
                .unwrap_or("syntax error");
            format!("invalid regex `{raw}`: {what}")
        }
        regex::Error::CompiledTooBig(limit) => {
            format!("invalid regex `{raw}`: compiled form exceeds {limit} bytes")
        }
        other => format!("invalid regex `{raw}`: {other}"),
    }
}

/// Parses a CIDR or a bare address; host bits are cleared.
fn parse_prefix(raw: &str) -> Result<IpNet, String> {
    let s = raw.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "invalid IP prefix `{raw}`: expected an address or a CIDR such as 192.0.2.0/24 or 2001:db8::/32"
    ))
}

/// Validates a whole spec. `pos` maps (field, index) to a position for errors; for
/// programmatic specs it returns None.
fn validate_spec(
    spec: &ServiceSpec,
    origin: &str,
    pos: &dyn Fn(Field, usize) -> Option<(usize, usize)>,
) -> Result<Service, SignatureError> {
    let err = |field: Field, i: usize, msg: String| match pos(field, i) {
        Some((line, column)) => SignatureError {
            origin: origin.to_string(),
            line: Some(line),
            column: Some(column),
            message: one_line(&msg),
        },
        None => SignatureError::new(origin, msg),
    };
    let name = spec.name.trim();
    if name.is_empty() {
        return Err(err(Field::Name, 0, "empty service name".to_string()));
    }
    if name.chars().any(char::is_control) {
        return Err(err(
            Field::Name,
            0,
            format!("service name {name:?} contains control characters"),
        ));
    }
    if spec.domains.is_empty() && spec.regexes.is_empty() && spec.prefixes.is_empty() {
        return Err(err(
            Field::Name,
            0,
            format!("service `{name}` has no domains, regexes or prefixes"),
        ));
    }
    let mut domains = Vec::with_capacity(spec.domains.len());
    for (i, d) in spec.domains.iter().enumerate() {
        let d = normalize_domain(d).map_err(|m| err(Field::Domain, i, m))?;
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    let mut regexes = Vec::with_capacity(spec.regexes.len());
    for (i, r) in spec.regexes.iter().enumerate() {
        anchored_regex(r).map_err(|m| err(Field::Regex, i, m))?;
        if !regexes.contains(r) {
            regexes.push(r.clone());
        }
    }
    let mut prefixes = Vec::with_capacity(spec.prefixes.len());
    for (i, p) in spec.prefixes.iter().enumerate() {
        let p = parse_prefix(p).map_err(|m| err(Field::Prefix, i, m))?;
        if !prefixes.contains(&p) {
            prefixes.push(p);
        }
    }
    Ok(Service::from_parts(
        name.to_string(),
        domains,
        regexes,
        prefixes,
    ))
}

#[derive(Clone, Copy)]
enum Field {
    Name,
    Domain,
    Regex,
    Prefix,
}

// ---- the compiled set --------------------------------------------------------------------

impl Signatures {
    /// The builtin signatures ([`BUILTIN_SIGNATURES`]).
    pub fn builtin() -> Signatures {
        // The builtin file is checked by a unit test (`builtin_parses`); should it ever fail
        // anyway, the detector degrades to "no services" rather than panicking.
        Signatures::from_toml_str(BUILTIN_SIGNATURES, BUILTIN_ORIGIN).unwrap_or_default()
    }

    /// A set without services (matches nothing).
    pub fn empty() -> Signatures {
        Signatures::default()
    }

    /// Parses a signature file. `origin` names the text in errors (usually the file path).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Signatures, SignatureError> {
        let probe: FormatProbe = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
        match probe.format {
            None => {
                return Err(SignatureError::new(
                    origin,
                    format!(
                        "missing `format = {FORMAT_VERSION}` at the top of the file (supported formats: {FORMAT_VERSION})"
                    ),
                ))
            }
            Some(f) => {
                let ok = matches!(f.get_ref(), toml::Value::Integer(v) if *v == i64::from(FORMAT_VERSION));
                if !ok {
                    return Err(SignatureError::at(
                        origin,
                        text,
                        f.span().start,
                        format!(
                            "unsupported format {}: this version of service-traceroute reads format {FORMAT_VERSION} only",
                            f.get_ref()
                        ),
                    ));
                }
            }
        }
        let file: FileRepr = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
        let mut sigs = Signatures::default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for repr in file.service {
            let at = |span: std::ops::Range<usize>| Some(line_col(text, span.start));
            let name_line = line_col(text, repr.name.span().start).0;
            let key = repr.name.get_ref().trim().to_lowercase();
            if let Some(first_line) = seen.get(&key) {
                return Err(SignatureError::at(
                    origin,
                    text,
                    repr.name.span().start,
                    format!(
                        "duplicate service name `{}` (first defined on line {first_line})",
                        repr.name.get_ref().trim()
                    ),
                ));
            }
            let spec = ServiceSpec {
                name: repr.name.get_ref().clone(),
                domains: repr.domains.iter().map(|s| s.get_ref().clone()).collect(),
                regexes: repr.regexes.iter().map(|s| s.get_ref().clone()).collect(),
                prefixes: repr.prefixes.iter().map(|s| s.get_ref().clone()).collect(),
            };
            let pos = |field: Field, i: usize| match field {
                Field::Name => at(repr.name.span()),
                Field::Domain => repr.domains.get(i).and_then(|s| at(s.span())),
                Field::Regex => repr.regexes.get(i).and_then(|s| at(s.span())),
                Field::Prefix => repr.prefixes.get(i).and_then(|s| at(s.span())),
            };
            let service = validate_spec(&spec, origin, &pos)?;
            if !key.is_empty() {
                seen.insert(key, name_line);
            }
            sigs.push_or_extend(service);
        }
        sigs.rebuild();
        Ok(sigs)
    }

    /// Reads and parses a signature file; errors name `path`.
    pub fn load(path: &Path) -> Result<Signatures, SignatureError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| SignatureError::new(&origin, format!("cannot read the file: {e}")))?;
        Signatures::from_toml_str(&text, &origin)
    }

    /// Adds one service. A service with the same name (case-insensitive) gets the new domains,
    /// regexes and prefixes appended (its display name stays as first written).
    pub fn add(&mut self, spec: ServiceSpec, origin: &str) -> Result<(), SignatureError> {
        let service = validate_spec(&spec, origin, &|_, _| None)?;
        self.push_or_extend(service);
        self.rebuild();
        Ok(())
    }

    /// Adds every service of `other`, by the same rule as [`Signatures::add`].
    pub fn merge(&mut self, other: Signatures) {
        for s in other.services {
            self.push_or_extend(s);
        }
        self.rebuild();
    }

    /// The subset of services named in `names` (case-insensitive), in this set's order. An
    /// unknown name is an error that lists the known names.
    pub fn select(&self, names: &[&str]) -> Result<Signatures, SignatureError> {
        let mut keep = vec![false; self.services.len()];
        for n in names {
            match self.by_name.get(&n.trim().to_lowercase()) {
                Some(&i) => keep[i] = true,
                None => {
                    let known: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
                    return Err(SignatureError::new(
                        "service selection",
                        format!(
                            "unknown service `{}`; known services: {}",
                            n.trim(),
                            if known.is_empty() {
                                "(none)".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        let mut out = Signatures::default();
        for (s, k) in self.services.iter().zip(keep) {
            if k {
                out.services.push(s.clone());
            }
        }
        out.rebuild();
        Ok(out)
    }

    /// The services, in file (insertion) order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// True if there is no service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The service a DNS name (or SNI) belongs to: the longest matching domain suffix wins;
    /// without one, the first service (file order) whose regex matches the whole name. The
    /// name is compared case-insensitively, with one trailing dot ignored.
    pub fn match_name(&self, name: &str) -> Option<&Service> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return None;
        }
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        if !self.domains.is_empty() {
            // Walk the label suffixes from the longest (the name itself) to the shortest:
            // "a.b.c", "b.c", "c". The first hit is the longest matching suffix.
            let mut suffix = name;
            loop {
                if let Some(&i) = self.domains.get(suffix) {
                    return self.services.get(i);
                }
                match suffix.find('.') {
                    Some(p) => suffix = &suffix[p + 1..],
                    None => break,
                }
            }
        }
        let set = self.regex_set.as_ref()?;
        // Patterns are stored in service order, so the lowest matching pattern index belongs to
        // the first matching service.
        let first = set.matches(name).iter().next()?;
        self.regex_owner
            .get(first)
            .and_then(|&i| self.services.get(i))
    }

    /// The service an address belongs to: the longest matching prefix wins. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are matched as IPv4.
    pub fn match_addr(&self, ip: IpAddr) -> Option<&Service> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                self.v4.iter().find_map(|(len, map)| {
                    let mask = if *len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(*len))
                    };
                    map.get(&(a & mask))
                })
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                self.v6.iter().find_map(|(len, map)| {
                    let mask = if *len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - u32::from(*len))
                    };
                    map.get(&(a & mask))
                })
            }
        }
        .and_then(|&i| self.services.get(i))
    }

    /// The service with this name (case-insensitive), if any.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.by_name
            .get(&name.trim().to_lowercase())
            .and_then(|&i| self.services.get(i))
    }

    fn push_or_extend(&mut self, service: Service) {
        let key = service.name.to_lowercase();
        if let Some(existing) = self
            .services
            .iter_mut()
            .find(|s| s.name.to_lowercase() == key)
        {
            for d in service.domains {
                if !existing.domains.contains(&d) {
                    existing.domains.push(d);
                }
            }
            for r in service.regexes {
                if !existing.regexes.contains(&r) {
                    existing.regexes.push(r);
                }
            }
            for p in service.prefixes {
                if !existing.prefixes.contains(&p) {
                    existing.prefixes.push(p);
                }
            }
        } else {
            self.services.push(service);
        }
    }

    /// Recomputes every index from `services` (all values in it are already validated).
    fn rebuild(&mut self) {
        self.by_name.clear();
        self.domains.clear();
        self.regex_owner.clear();
        let mut patterns = Vec::new();
        let mut v4: HashMap<u8, HashMap<u32, usize>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, usize>> = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            self.by_name.entry(s.name.to_lowercase()).or_insert(i);
            for d in &s.domains {
                self.domains.entry(d.as_str().into()).or_insert(i);
            }
            for r in &s.regexes {
                // validated when the service was built: it compiles on its own
                patterns.push(format!("^(?:{r})$"));
                self.regex_owner.push(i);
            }
            for p in &s.prefixes {
                match p {
                    IpNet::V4(n) => {
                        v4.entry(n.prefix_len())
                            .or_default()
                            .entry(u32::from(n.network()))
                            .or_insert(i);
                    }
                    IpNet::V6(n) => {
                        v6.entry(n.prefix_len())
                            .or_default()
                            .entry(u128::from(n.network()))
                            .or_insert(i);
                    }
                }
            }
        }
        self.regex_set = if patterns.is_empty() {
            None
        } else {
            // Each pattern compiled alone above; the set of them can still exceed the limit in
            // theory, in which case regexes are dropped rather than failing at match time.
            RegexSetBuilder::new(&patterns)
                .case_insensitive(true)
                .size_limit(REGEX_SIZE_LIMIT.saturating_mul(patterns.len().max(1)))
                .build()
                .ok()
        };
        if self.regex_set.is_none() {
            self.regex_owner.clear();
        }
        let mut v4: Vec<_> = v4.into_iter().collect();
        v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut v6: Vec<_> = v6.into_iter().collect();
        v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        self.v4 = v4;
        self.v6 = v6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Signatures, SignatureError> {
        Signatures::from_toml_str(text, "test.toml")
    }

    fn err(text: &str) -> SignatureError {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    fn name_of(s: &Signatures, n: &str) -> Option<String> {
        s.match_name(n).map(|s| s.name.clone())
    }

    fn addr_of(s: &Signatures, a: &str) -> Option<String> {
        s.match_addr(a.parse().unwrap()).map(|s| s.name.clone())
    }

    #[test]
    fn builtin_parses() {
        let s = Signatures::from_toml_str(BUILTIN_SIGNATURES, BUILTIN_ORIGIN)
            .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = s.services().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "YouTube",
                "Netflix",
                "Facebook",
                "Spotify",
                "Amazon",
                "Hulu",
                "CloudFront",
                "Sling TV",
                "Sony Vue",
                "HBO",
                "DirecTV Now",
                "Twitch"
            ]
        );
        assert_eq!(Signatures::builtin().services().len(), 12);
        assert_eq!(s.service("netflix").unwrap().prefixes.len(), 14);
    }

    #[test]
    fn builtin_matches() {
        let s = Signatures::builtin();
        for (name, want) in [
            ("r4---sn-abc.googlevideo.com", Some("YouTube")),
            ("R4---SN-ABC.GoogleVideo.com.", Some("YouTube")),
            ("www.youtube.com", Some("YouTube")),
            ("youtube.com", Some("YouTube")),
            ("i.ytimg.com", Some("YouTube")),
            ("foo.nflxvideo.net", Some("Netflix")),
            ("ipv4-c001-ord001-ix.1.oca.nflxvideo.net", Some("Netflix")),
            ("scontent.xx.fbcdn.net", Some("Facebook")),
            ("audio-ak.spotify.com.edgesuite.net", None),
            ("spotify.map.fastly.net", Some("Spotify")),
            ("avodmp4s3ww-a.akamaihd.net", Some("Amazon")),
            ("amazon.vo.llnwd.net", Some("Amazon")),
            ("amazonvideo.hs.lldns.net", Some("Amazon")),
            ("other-a.akamaihd.net", None),
            ("manifest.hulustream.com", Some("Hulu")),
            ("hulustream.example", None),
            ("d1.cloudfront.net", Some("CloudFront")),
            ("p-cdn1.movetv.com", Some("Sling TV")),
            ("www.echostar.com", Some("Sling TV")),
            ("echostarx.com", None),
            ("foo.sonytv.net", Some("Sony Vue")),
            ("media.totsuko.tv", Some("Sony Vue")),
            ("cdn.hbogo.com", Some("HBO")),
            ("www.hbogo.com", None),
            ("dtvn-live-sponsored.akamaized.net", Some("DirecTV Now")),
            ("dtvn-vod", None),
            ("video-weaver.fra05.hls.ttvnw.net", Some("Twitch")),
            ("www.twitch.tv", Some("Twitch")),
            ("example.com", None),
            ("", None),
            (".", None),
        ] {
            assert_eq!(name_of(&s, name).as_deref(), want, "{name}");
        }
        assert_eq!(addr_of(&s, "45.57.1.1").as_deref(), Some("Netflix"));
        assert_eq!(addr_of(&s, "::ffff:45.57.1.1").as_deref(), Some("Netflix"));
        assert_eq!(addr_of(&s, "2a00:86c0:1::1").as_deref(), Some("Netflix"));
        assert_eq!(addr_of(&s, "45.58.0.1"), None);
        assert_eq!(addr_of(&s, "2001:db8::1"), None);
    }

    #[test]
    fn suffixes_match_on_label_boundaries() {
        let s = parse("format = 1\n[[service]]\nname = \"T\"\ndomains = [\"Example.TEST.\"]\n")
            .unwrap();
        assert_eq!(s.services()[0].domains, ["example.test"]);
        assert_eq!(name_of(&s, "example.test").as_deref(), Some("T"));
        assert_eq!(name_of(&s, "video.example.test").as_deref(), Some("T"));
        assert_eq!(name_of(&s, "a.b.EXAMPLE.test.").as_deref(), Some("T"));
        assert_eq!(name_of(&s, "badexample.test"), None);
        assert_eq!(name_of(&s, "example.test.evil"), None);
        assert_eq!(name_of(&s, "test"), None);
    }

    #[test]
    fn longest_suffix_wins_then_regex_in_file_order() {
        let s = parse(
            r#"format = 1
[[service]]
name = "Cdn"
domains = ["cdn.test"]
regexes = ['edge[0-9]+\..*']
[[service]]
name = "Video"
domains = ["video.cdn.test"]
regexes = ['edge1\.other\.test', 'x.*']
"#,
        )
        .unwrap();
        assert_eq!(name_of(&s, "a.video.cdn.test").as_deref(), Some("Video"));
        assert_eq!(name_of(&s, "a.cdn.test").as_deref(), Some("Cdn"));
        // both regexes match: the first service in file order wins
        assert_eq!(name_of(&s, "edge1.other.test").as_deref(), Some("Cdn"));
        assert_eq!(name_of(&s, "xyz.test").as_deref(), Some("Video"));
        // regexes are anchored at both ends: "myedge1.other.test" matches neither whole-name
        // pattern, "edge1.other.test.evil" only Cdn's (which ends with .*)
        assert_eq!(name_of(&s, "myedge1.other.test"), None);
        assert_eq!(name_of(&s, "edge1.other.test.evil").as_deref(), Some("Cdn"));
        assert_eq!(name_of(&s, "xedge1.other.test").as_deref(), Some("Video"));
        // a suffix match beats a regex match
        assert_eq!(name_of(&s, "edge1.cdn.test").as_deref(), Some("Cdn"));
        assert_eq!(
            name_of(&s, "edge1.video.cdn.test").as_deref(),
            Some("Video")
        );
    }

    #[test]
    fn regex_cannot_escape_anchoring() {
        // `a)|(b` does not compile on its own, so it cannot turn ^(?:...)$ into an unanchored
        // alternation.
        let e = err("format = 1\n[[service]]\nname = \"R\"\nregexes = ['a)|(b']\n");
        assert_eq!((e.line, e.column), (Some(4), Some(12)));
        assert!(e.message.starts_with("invalid regex `a)|(b`"), "{e}");
        let s = parse("format = 1\n[[service]]\nname = \"R\"\nregexes = ['a|b']\n").unwrap();
        assert_eq!(name_of(&s, "a").as_deref(), Some("R"));
        assert_eq!(name_of(&s, "ab"), None);
        assert_eq!(name_of(&s, "xb"), None);
    }

    #[test]
    fn prefixes_longest_wins_and_host_bits_cleared() {
        let s = parse(
            r#"format = 1
[[service]]
name = "Wide"
prefixes = ["10.0.0.0/8", "2001:db8::/32", "0.0.0.0/0"]
[[service]]
name = "Narrow"
prefixes = ["10.1.2.3/16", "2001:db8:1::", "192.0.2.7"]
"#,
        )
        .unwrap();
        assert_eq!(
            s.services()[1].prefixes,
            vec![
                "10.1.0.0/16".parse::<IpNet>().unwrap(),
                "2001:db8:1::/128".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
        assert_eq!(addr_of(&s, "10.1.9.9").as_deref(), Some("Narrow"));
        assert_eq!(addr_of(&s, "10.2.9.9").as_deref(), Some("Wide"));
        assert_eq!(addr_of(&s, "192.0.2.7").as_deref(), Some("Narrow"));
        assert_eq!(addr_of(&s, "192.0.2.8").as_deref(), Some("Wide"));
        assert_eq!(addr_of(&s, "2001:db8:1::").as_deref(), Some("Narrow"));
        assert_eq!(addr_of(&s, "2001:db8:1::1").as_deref(), Some("Wide"));
        assert_eq!(addr_of(&s, "2001:db9::1"), None);
    }

    #[test]
    fn error_positions_and_messages() {
        // TOML syntax error: position from the toml crate's span.
        let e = err("format = 1\n[[service]]\nname == \"A\"\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().starts_with("test.toml:3:"), "{e}");
        assert!(!e.message.contains('\n'));

        // missing format: no position
        let e = err("[[service]]\nname = \"A\"\ndomains = [\"a.test\"]\n");
        assert_eq!((e.line, e.column), (None, None));
        assert!(e.message.contains("missing `format = 1`"), "{e}");
        assert!(e.to_string().starts_with("test.toml: missing"), "{e}");

        // unsupported format, even with keys of a future format
        let e = err("# c\nformat = 2\n[[service]]\nname = \"A\"\nfuture = 1\n");
        assert_eq!((e.line, e.column), (Some(2), Some(10)));
        assert!(
            e.message.contains(
                "unsupported format 2: this version of service-traceroute reads format 1 only"
            ),
            "{e}"
        );
        let e = err("format = \"1\"\n");
        assert_eq!(e.line, Some(1));

        // unknown keys, at top level and in a service
        let e = err("format = 1\nservices = []\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("unknown field `services`"), "{e}");
        let e = err("format = 1\n[[service]]\nname = \"A\"\ndomain = [\"a.test\"]\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("unknown field `domain`"), "{e}");

        // empty name
        let e = err("format = 1\n[[service]]\nname = \" \"\ndomains = [\"a.test\"]\n");
        assert_eq!((e.line, e.column), (Some(3), Some(8)));
        assert_eq!(e.message, "empty service name");

        // duplicate name (case-insensitive)
        let e = err(
            "format = 1\n[[service]]\nname = \"A\"\ndomains = [\"a.test\"]\n\n[[service]]\nname = \"a\"\ndomains = [\"b.test\"]\n",
        );
        assert_eq!((e.line, e.column), (Some(7), Some(8)));
        assert_eq!(
            e.message,
            "duplicate service name `a` (first defined on line 3)"
        );

        // a service with nothing to match
        let e = err("format = 1\n[[service]]\nname = \"Empty\"\n");
        assert_eq!(e.line, Some(3));
        assert_eq!(
            e.message,
            "service `Empty` has no domains, regexes or prefixes"
        );

        // invalid domains, each at its own line and column
        for (d, what) in [
            ("a..test", "empty label"),
            ("a test", "character ' '"),
            ("*.a.test", "no wildcards"),
            ("https://a.test/", "not a URL"),
            ("", "empty"),
            (&"a".repeat(64), "longer than 63"),
            (&["abcdefghi"; 26].join("."), "at most 253"),
        ] {
            let text = format!(
                "format = 1\n[[service]]\nname = \"D\"\ndomains = [\n  \"ok.test\",\n  \"{d}\",\n]\n"
            );
            let e = err(&text);
            assert_eq!((e.line, e.column), (Some(6), Some(3)), "{d}: {e}");
            assert!(e.message.contains(what), "{d}: {e}");
        }

        // invalid regex: the regex crate's message on one line
        let e = err("format = 1\n[[service]]\nname = \"R\"\nregexes = [\n  'ok',\n  'a(b',\n]\n");
        assert_eq!((e.line, e.column), (Some(6), Some(3)));
        assert_eq!(e.message, "invalid regex `a(b`: unclosed group");

        // invalid CIDR
        let e = err("format = 1\n[[service]]\nname = \"P\"\nprefixes = [\"192.0.2.0/24\", \"192.0.2.0/33\"]\n");
        assert_eq!((e.line, e.column), (Some(4), Some(29)));
        assert!(
            e.message.starts_with("invalid IP prefix `192.0.2.0/33`"),
            "{e}"
        );

        // columns count characters, not bytes
        let e = err("format = 1\n[[service]]\nname = \"é\"\ndomains = [\"é.test\"]\n");
        assert_eq!((e.line, e.column), (Some(4), Some(12)));
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("svctr-detect-sig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "format = 1\n[[service]]\nname = \"A\"\nprefixes = [\"x\"]\n",
        )
        .unwrap();
        let e = Signatures::load(&path).unwrap_err();
        assert_eq!(e.to_string(), format!("{}:4:13: invalid IP prefix `x`: expected an address or a CIDR such as 192.0.2.0/24 or 2001:db8::/32", path.display()));
        let e = Signatures::load(&dir.join("missing.toml")).unwrap_err();
        assert!(e.message.starts_with("cannot read the file"), "{e}");
        std::fs::write(
            &path,
            "format = 1\n[[service]]\nname = \"A\"\nprefixes = [\"192.0.2.1\"]\n",
        )
        .unwrap();
        let s = Signatures::load(&path).unwrap();
        assert_eq!(addr_of(&s, "192.0.2.1").as_deref(), Some("A"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn add_merge_select() {
        let mut s = Signatures::empty();
        assert!(s.is_empty());
        s.add(
            ServiceSpec {
                name: "My-CDN".into(),
                domains: vec!["cdn.test".into()],
                ..Default::default()
            },
            "cli",
        )
        .unwrap();
        s.add(
            ServiceSpec {
                name: "my-cdn".into(),
                regexes: vec![r"edge[0-9]+\.other\.test".into()],
                prefixes: vec!["198.51.100.0/24".into()],
                ..Default::default()
            },
            "cli",
        )
        .unwrap();
        assert_eq!(s.services().len(), 1);
        assert_eq!(s.services()[0].name, "My-CDN");
        assert_eq!(name_of(&s, "x.cdn.test").as_deref(), Some("My-CDN"));
        assert_eq!(name_of(&s, "edge7.other.test").as_deref(), Some("My-CDN"));
        assert_eq!(addr_of(&s, "198.51.100.9").as_deref(), Some("My-CDN"));

        let e = s
            .add(
                ServiceSpec {
                    name: "bad".into(),
                    domains: vec!["a..b".into()],
                    ..Default::default()
                },
                "--host",
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "--host: invalid domain `a..b`: empty label");
        let e = s
            .add(
                ServiceSpec {
                    name: "nothing".into(),
                    ..Default::default()
                },
                "api",
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "api: service `nothing` has no domains, regexes or prefixes"
        );

        let mut all = Signatures::builtin();
        let mut extra = Signatures::empty();
        extra
            .add(
                ServiceSpec {
                    name: "youtube".into(),
                    domains: vec!["yt.example.test".into()],
                    ..Default::default()
                },
                "x",
            )
            .unwrap();
        all.merge(extra);
        all.merge(s);
        assert_eq!(all.services().len(), 13);
        assert_eq!(
            name_of(&all, "a.yt.example.test").as_deref(),
            Some("YouTube")
        );
        assert_eq!(name_of(&all, "x.cdn.test").as_deref(), Some("My-CDN"));

        let sel = all.select(&["my-cdn", "NETFLIX", "netflix"]).unwrap();
        let names: Vec<&str> = sel.services().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Netflix", "My-CDN"]);
        assert_eq!(name_of(&sel, "youtube.com"), None);
        assert_eq!(addr_of(&sel, "45.57.0.1").as_deref(), Some("Netflix"));
        let e = all.select(&["youtube", "hbo-max"]).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "service selection: unknown service `hbo-max`; known services: YouTube, Netflix,"
            ),
            "{e}"
        );
        assert!(Signatures::empty()
            .select(&["x"])
            .unwrap_err()
            .message
            .ends_with("(none)"));
    }

    #[test]
    fn spec_serde_roundtrip() {
        let spec: ServiceSpec =
            serde_json::from_str(r#"{"name":"A","domains":["a.test"]}"#).unwrap();
        assert_eq!(spec.regexes, Vec::<String>::new());
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"name":"A","domains":["a.test"],"regexes":[],"prefixes":[]}"#
        );
    }
}
