//! Loads the IP prefixes of selected countries from a MaxMind DB (`.mmdb`) GeoIP database.
//!
//! Two record layouts are understood:
//!
//! * MaxMind GeoLite2 / GeoIP2 Country (and City): `{"country": {"iso_code": "DE"}, ...}`, falling
//!   back to `registered_country.iso_code` where a network has no `country`;
//! * the flat layout of the public-domain geo-whois-asn-country database (ip-location-db):
//!   `{"country_code": "DE"}`.
//!
//! The result is two sorted lists of merged prefixes, ready to be written to LPM-trie maps.
//! IPv4 networks come out as [`Ipv4Net`] exactly once, even though an IPv6 database stores them
//! at `::/96` and makes them reachable again through alias subtrees (`::ffff:0:0/96`, `2002::/16`
//! and, for some writers, `2001::/32`); the aliases never show up as IPv6 prefixes.
//!
//! The only I/O is reading the database file.

mod country;
mod tree;

use core::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use maxminddb::{MaxMindDbError, Reader};
use serde::Deserialize;

pub use country::{CountryCode, CountryCodeError, DEFAULT_BLOCKED, ISO_3166_ALPHA2};

/// The prefixes of the selected countries, merged and sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountryPrefixes {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
    /// Networks of the selected countries as stored in the database, before merging.
    pub networks_read: usize,
    /// Every network of the database with a record, whatever its country.
    pub networks_total: usize,
}

impl CountryPrefixes {
    /// Number of prefixes after merging, IPv4 and IPv6 together.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Where a database came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbOrigin {
    File(PathBuf),
    Memory,
}

impl fmt::Display for DbOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbOrigin::File(path) => write!(f, "GeoIP database {}", path.display()),
            DbOrigin::Memory => f.write_str("in-memory GeoIP database"),
        }
    }
}

/// Why the prefixes could not be loaded.
///
/// Every message is complete on its own (it names the database and includes the underlying
/// cause), so the underlying errors are kept in fields but not reported as `source()`, which
/// would print them twice in an error chain.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("no countries selected: the country list is empty")]
    NoCountries,
    #[error("GeoIP database {} does not exist", path.display())]
    NotFound { path: PathBuf, error: io::Error },
    #[error("cannot read GeoIP database {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{origin} is corrupt or not a MaxMind DB (.mmdb) file: {error}")]
    InvalidDatabase { origin: DbOrigin, error: MaxMindDbError },
    #[error("{origin} has a record that cannot be decoded: {error}")]
    Record { origin: DbOrigin, error: MaxMindDbError },
    #[error("{origin} is not supported: {reason}")]
    Unsupported { origin: DbOrigin, reason: String },
}

/// Reads the database at `path` and returns the merged prefixes of `countries`.
pub fn load_country_prefixes(path: &Path, countries: &[CountryCode]) -> Result<CountryPrefixes, GeoError> {
    if countries.is_empty() {
        return Err(GeoError::NoCountries);
    }
    let bytes = std::fs::read(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => GeoError::NotFound { path: path.to_owned(), error },
        _ => GeoError::Read { path: path.to_owned(), error },
    })?;
    load(&bytes, countries, DbOrigin::File(path.to_owned()))
}

/// As [`load_country_prefixes`], for a database already in memory.
pub fn load_country_prefixes_from_bytes(
    bytes: &[u8],
    countries: &[CountryCode],
) -> Result<CountryPrefixes, GeoError> {
    load(bytes, countries, DbOrigin::Memory)
}

/// The fields of a record this crate looks at; everything else is skipped.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Country<'a>>,
    #[serde(borrow)]
    registered_country: Option<Country<'a>>,
    /// geo-whois-asn-country layout.
    #[serde(borrow)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

impl<'a> Record<'a> {
    fn iso_code(&self) -> Option<&'a str> {
        let country = self.country.as_ref().and_then(|c| c.iso_code);
        country.or_else(|| self.registered_country.as_ref().and_then(|c| c.iso_code)).or(self.country_code)
    }
}

/// The selected countries as a 26×26 table, indexed by the two letters.
struct CountrySet([bool; 26 * 26]);

impl CountrySet {
    fn new(countries: &[CountryCode]) -> Self {
        let mut set = [false; 26 * 26];
        for country in countries {
            let [a, b] = country.as_bytes();
            set[usize::from(a - b'A') * 26 + usize::from(b - b'A')] = true;
        }
        CountrySet(set)
    }

    /// Whether `code` (from the database, any case) is one of the selected countries.
    fn contains(&self, code: &str) -> bool {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                let index = |c: &u8| usize::from(c.to_ascii_uppercase() - b'A');
                self.0[index(a) * 26 + index(b)]
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses, `::ffff:0:0/96`.
const V4_MAPPED: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);

fn load(bytes: &[u8], countries: &[CountryCode], origin: DbOrigin) -> Result<CountryPrefixes, GeoError> {
    if countries.is_empty() {
        return Err(GeoError::NoCountries);
    }
    // maxminddb 0.26 trusts the offsets in the file and panics (slice index out of range) on
    // some corrupt databases. Nothing outlives a panic here but the input, so catching it is
    // sound; the default panic hook still prints the panic message.
    let guarded = panic::catch_unwind(AssertUnwindSafe(|| load_unguarded(bytes, countries, &origin)));
    guarded.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let error = MaxMindDbError::InvalidDatabase(format!("the reader failed: {message}"));
        Err(GeoError::InvalidDatabase { origin, error })
    })
}

fn load_unguarded(
    bytes: &[u8],
    countries: &[CountryCode],
    origin: &DbOrigin,
) -> Result<CountryPrefixes, GeoError> {
    let wanted = CountrySet::new(countries);
    let invalid = |error| GeoError::InvalidDatabase { origin: origin.clone(), error };
    let reader = Reader::from_source(bytes).map_err(invalid)?;
    tree::check(bytes, &reader.metadata)
        .map_err(|message| invalid(MaxMindDbError::InvalidDatabase(message)))?;

    // The root to iterate from: an IPv6 tree is walked whole (`maxminddb` reports its `::/96`
    // subtree as IPv4 networks and skips the alias subtrees that point back at it); an IPv4 tree
    // must be walked as IPv4, or its networks would come out as IPv6 ones.
    let root = if reader.metadata.ip_version == 4 {
        "0.0.0.0/0"
    } else {
        check_ipv4_subtree(&reader, origin)?;
        "::/0"
    };
    // `parse` infers maxminddb's own `IpNetwork` type, so this crate need not depend on the
    // exact `ipnetwork` version maxminddb uses.
    let networks = reader.within::<Record>(root.parse().expect("valid network")).map_err(invalid)?;

    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut networks_total = 0;
    let mut with_country = 0;
    for item in networks {
        let item = item.map_err(|error| match error {
            MaxMindDbError::Decoding(_) => GeoError::Record { origin: origin.clone(), error },
            error => invalid(error),
        })?;
        networks_total += 1;
        let Some(code) = item.info.iso_code() else { continue };
        with_country += 1;
        if !wanted.contains(code) {
            continue;
        }
        let prefix = item.ip_net.prefix();
        match item.ip_net.network() {
            IpAddr::V4(addr) => v4.push(Ipv4Net::new(addr, prefix).expect("prefix fits IPv4")),
            IpAddr::V6(addr) => {
                let net = Ipv6Net::new(addr, prefix).expect("prefix fits IPv6");
                // A database that stores IPv4 as mapped addresses instead of at `::/96`.
                match addr.to_ipv4_mapped() {
                    Some(addr) if V4_MAPPED.contains(&net) => {
                        v4.push(Ipv4Net::new(addr, prefix - 96).expect("prefix fits IPv4"))
                    }
                    _ => v6.push(net),
                }
            }
        }
    }
    if networks_total > 0 && with_country == 0 {
        return Err(GeoError::Unsupported {
            origin: origin.clone(),
            reason: format!(
                "none of its {networks_total} networks has a country code (database type {:?}); \
                 expected a country database",
                reader.metadata.database_type
            ),
        });
    }

    let networks_read = v4.len() + v6.len();
    let mut v4 = Ipv4Net::aggregate(&v4);
    let mut v6 = Ipv6Net::aggregate(&v6);
    v4.sort_unstable();
    v6.sort_unstable();
    Ok(CountryPrefixes { v4, v6, networks_read, networks_total })
}

/// Rejects IPv6 trees that `maxminddb` 0.26 cannot iterate correctly: those where one record
/// covers the whole IPv4 subtree `::/96` (or more). It would report such a network with a
/// prefix length below 96 as IPv4 (an arithmetic overflow), or silently skip IPv6 networks that
/// share the record of the IPv4 subtree, mistaking them for aliases of it.
fn check_ipv4_subtree<S: AsRef<[u8]>>(reader: &Reader<S>, origin: &DbOrigin) -> Result<(), GeoError> {
    let lookup = reader.lookup_prefix::<serde::de::IgnoredAny>(Ipv6Addr::UNSPECIFIED.into());
    let (record, prefix_len) = lookup.map_err(|error| match error {
        MaxMindDbError::Decoding(_) => GeoError::Record { origin: origin.clone(), error },
        error => GeoError::InvalidDatabase { origin: origin.clone(), error },
    })?;
    if record.is_some() && prefix_len <= 96 {
        return Err(GeoError::Unsupported {
            origin: origin.clone(),
            reason: format!(
                "a single record covers ::/{prefix_len}, i.e. the whole IPv4 address space, \
                 which the maxminddb reader cannot iterate"
            ),
        });
    }
    Ok(())
}
