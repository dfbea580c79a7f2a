//! Loads databases built with `mmdb-writer` in both record layouts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mmdb_writer::{IpVersion, Ipv4Aliasing, RecordSize, Writer};
use serde::Serialize;
use sg_geo::{
    CountryCode, CountryCodeError, CountryPrefixes, DbOrigin, GeoError, load_country_prefixes,
    load_country_prefixes_from_bytes,
};

/// The geo-whois-asn-country layout. `tag` keeps adjacent networks of one country as separate
/// records: the writer would otherwise collapse identical sibling leaves into one network.
#[derive(Serialize)]
struct Flat {
    country_code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<u32>,
}

/// The GeoLite2 / GeoIP2 Country layout, with the usual extra fields the loader must skip.
#[derive(Serialize)]
struct MaxMind {
    #[serde(skip_serializing_if = "Option::is_none")]
    continent: Option<Place>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<Place>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_country: Option<Place>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traits: Option<Traits>,
}

#[derive(Serialize)]
struct Place {
    #[serde(skip_serializing_if = "Option::is_none")]
    iso_code: Option<&'static str>,
    geoname_id: u32,
    names: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
struct Traits {
    is_anycast: bool,
}

fn place(iso_code: &'static str, geoname_id: u32) -> Place {
    let names = [("en", iso_code), ("de", "Land"), ("zh-CN", "国家")].into();
    Place { iso_code: Some(iso_code), geoname_id, names }
}

fn continent(code: &'static str) -> Place {
    Place { iso_code: None, geoname_id: 6255148, names: [("en", code)].into() }
}

/// One network of the test data: where, which country, and how the MaxMind layout stores it.
struct Entry {
    net: &'static str,
    country: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// `country` and `registered_country` both set (registered elsewhere for variety).
    Both,
    /// Only `registered_country` (the layout MaxMind uses for e.g. some satellite providers).
    RegisteredOnly,
    /// A record without any country: only a continent (e.g. anycast networks).
    NoCountry,
}

const fn e(net: &'static str, country: &'static str) -> Entry {
    Entry { net, country, kind: Kind::Both }
}

/// Shared by both layouts. DE and FR are the selected countries; everything else must not show.
const ENTRIES: &[Entry] = &[
    // DE: four adjacent networks that merge into 5.1.0.0/22.
    e("5.1.0.0/24", "DE"),
    e("5.1.1.0/24", "DE"),
    e("5.1.2.0/24", "DE"),
    e("5.1.3.0/24", "DE"),
    // FR right after it: adjacent, but 5.1.0.0/22 + 5.1.4.0/24 is no CIDR block.
    e("5.1.4.0/24", "FR"),
    // Not listed, right after FR.
    e("5.1.5.0/24", "US"),
    // DE and FR halves of one /24 merge across countries.
    e("10.20.30.0/25", "DE"),
    e("10.20.30.128/25", "FR"),
    // Only registered_country in the MaxMind layout.
    Entry { net: "80.0.0.0/16", country: "DE", kind: Kind::RegisteredOnly },
    e("8.8.8.0/24", "US"),
    e("1.0.0.0/24", "CN"),
    Entry { net: "1.1.1.0/24", country: "AU", kind: Kind::NoCountry },
    // The top of the IPv4 space, next to 6to4 in an IPv6 tree.
    e("223.255.255.0/24", "FR"),
    // IPv6: two adjacent DE /32s merge into a /31; a lone FR /48; others not listed.
    e("2a00:2::/32", "DE"),
    e("2a00:3::/32", "DE"),
    e("2a01:cb00::/48", "FR"),
    e("2a01:cb00:1::/48", "US"),
    e("2600::/32", "US"),
    e("240e::/20", "CN"),
    Entry { net: "2a02:1::/32", country: "FR", kind: Kind::RegisteredOnly },
    Entry { net: "2606:4700::/32", country: "US", kind: Kind::NoCountry },
];

const DE_FR_V4: &[&str] = &["5.1.0.0/22", "5.1.4.0/24", "10.20.30.0/24", "80.0.0.0/16", "223.255.255.0/24"];
const DE_FR_V6: &[&str] = &["2a00:2::/31", "2a01:cb00::/48", "2a02:1::/32"];
/// DE and FR networks in ENTRIES.
const DE_FR_NETWORKS: usize = 13;

fn codes(list: &str) -> Vec<CountryCode> {
    CountryCode::parse_list(list).unwrap()
}

fn nets<T: std::str::FromStr<Err: std::fmt::Debug>>(list: &[&str]) -> Vec<T> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// A fixed build time, for reproducible databases.
fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn writer(ip_version: IpVersion, aliasing: Ipv4Aliasing) -> Writer {
    Writer::builder("sg-geo-test").ip_version(ip_version).ipv4_aliasing(aliasing).build_epoch(epoch()).build()
}

fn flat_db(entries: &[Entry], ip_version: IpVersion) -> Vec<u8> {
    let mut db = writer(ip_version, Ipv4Aliasing::Enabled);
    insert_flat(&mut db, entries, ip_version == IpVersion::V4);
    db.to_bytes().unwrap()
}

fn insert_flat(db: &mut Writer, entries: &[Entry], ipv4_only: bool) {
    for (i, entry) in entries.iter().enumerate() {
        let net: IpNet = entry.net.parse().unwrap();
        if ipv4_only && matches!(net, IpNet::V6(_)) {
            continue;
        }
        if matches!(entry.kind, Kind::NoCountry) {
            // The flat layout has no "no country" record; use an unrelated map instead.
            db.insert(net, &BTreeMap::from([("asn", i as u32)])).unwrap();
        } else {
            db.insert(net, &Flat { country_code: entry.country, tag: Some(i as u32) }).unwrap();
        }
    }
}

fn maxmind_db(entries: &[Entry]) -> Vec<u8> {
    let mut db = writer(IpVersion::V6, Ipv4Aliasing::Enabled);
    for (i, entry) in entries.iter().enumerate() {
        // Distinct geoname ids keep adjacent networks apart (see `Flat::tag`).
        let id = 1000 + i as u32;
        let record = match entry.kind {
            Kind::Both => MaxMind {
                continent: Some(continent("EU")),
                country: Some(place(entry.country, id)),
                registered_country: Some(place(if entry.country == "US" { "CA" } else { "US" }, id)),
                traits: None,
            },
            Kind::RegisteredOnly => MaxMind {
                continent: Some(continent("EU")),
                country: None,
                registered_country: Some(place(entry.country, id)),
                traits: None,
            },
            Kind::NoCountry => MaxMind {
                continent: Some(continent("OC")),
                country: None,
                registered_country: None,
                traits: Some(Traits { is_anycast: true }),
            },
        };
        db.insert(entry.net.parse::<IpNet>().unwrap(), &record).unwrap();
    }
    db.to_bytes().unwrap()
}

fn assert_prefixes(got: &CountryPrefixes, v4: &[&str], v6: &[&str]) {
    assert_eq!(got.v4, nets::<Ipv4Net>(v4), "IPv4 prefixes");
    assert_eq!(got.v6, nets::<Ipv6Net>(v6), "IPv6 prefixes");
}

#[test]
fn flat_layout() {
    let db = flat_db(ENTRIES, IpVersion::V6);
    let got = load_country_prefixes_from_bytes(&db, &codes("DE,FR")).unwrap();
    assert_prefixes(&got, DE_FR_V4, DE_FR_V6);
    assert_eq!(got.networks_read, DE_FR_NETWORKS);
    assert_eq!(got.networks_total, ENTRIES.len());
}

#[test]
fn maxmind_layout() {
    let db = maxmind_db(ENTRIES);
    let got = load_country_prefixes_from_bytes(&db, &codes("DE,FR")).unwrap();
    assert_prefixes(&got, DE_FR_V4, DE_FR_V6);
    assert_eq!(got.networks_read, DE_FR_NETWORKS);
    assert_eq!(got.networks_total, ENTRIES.len());
}

#[test]
fn country_wins_over_registered_country() {
    // In `Kind::Both` records of US networks the registered country is CA, of all others US.
    let db = maxmind_db(ENTRIES);
    let got = load_country_prefixes_from_bytes(&db, &codes("US")).unwrap();
    assert_prefixes(&got, &["5.1.5.0/24", "8.8.8.0/24"], &["2600::/32", "2a01:cb00:1::/48"]);
    let got = load_country_prefixes_from_bytes(&db, &codes("CA")).unwrap();
    assert_prefixes(&got, &[], &[]);
    assert_eq!(got.networks_read, 0);
}

#[test]
fn single_countries_in_both_layouts() {
    for db in [flat_db(ENTRIES, IpVersion::V6), maxmind_db(ENTRIES)] {
        let de = load_country_prefixes_from_bytes(&db, &codes("de")).unwrap();
        assert_prefixes(&de, &["5.1.0.0/22", "10.20.30.0/25", "80.0.0.0/16"], &["2a00:2::/31"]);
        assert_eq!(de.networks_read, 8);
        let cn = load_country_prefixes_from_bytes(&db, &codes("CN")).unwrap();
        assert_prefixes(&cn, &["1.0.0.0/24"], &["240e::/20"]);
        // AU only appears in a record without country.
        let au = load_country_prefixes_from_bytes(&db, &codes("AU")).unwrap();
        assert!(au.is_empty(), "{au:?}");
    }
}

#[test]
fn default_countries() {
    let db = flat_db(ENTRIES, IpVersion::V6);
    let got = load_country_prefixes_from_bytes(&db, &CountryCode::default_blocked()).unwrap();
    let v4 = ["1.0.0.0/24", "5.1.0.0/22", "5.1.4.0/24", "10.20.30.0/24", "80.0.0.0/16", "223.255.255.0/24"];
    assert_prefixes(&got, &v4, &["240e::/20", "2a00:2::/31", "2a01:cb00::/48", "2a02:1::/32"]);
}

#[test]
fn all_record_sizes() {
    for (ip_version, v6) in [(IpVersion::V6, DE_FR_V6), (IpVersion::V4, &[][..])] {
        for record_size in [RecordSize::Bits24, RecordSize::Bits28, RecordSize::Bits32] {
            let mut db = Writer::builder("sg-geo-test")
                .ip_version(ip_version)
                .record_size(record_size)
                .build_epoch(epoch())
                .build();
            insert_flat(&mut db, ENTRIES, ip_version == IpVersion::V4);
            let db = db.to_bytes().unwrap();
            let got = load_country_prefixes_from_bytes(&db, &codes("DE,FR")).unwrap();
            assert_prefixes(&got, DE_FR_V4, v6);
        }
    }
}

#[test]
fn ipv4_only_database() {
    let db = flat_db(ENTRIES, IpVersion::V4);
    let got = load_country_prefixes_from_bytes(&db, &codes("DE,FR")).unwrap();
    assert_prefixes(&got, DE_FR_V4, &[]);
    assert_eq!(got.networks_read, 9);
}

/// An IPv6 tree makes the IPv4 subtree at `::/96` reachable again from `::ffff:0:0/96`,
/// `2001::/32` and `2002::/16`; those aliases must be neither IPv6 prefixes nor IPv4 duplicates.
#[test]
fn ipv4_aliases_are_not_reported() {
    let db = flat_db(ENTRIES, IpVersion::V6);
    // The aliases are there: the IPv4 data is reachable through them.
    let reader = maxminddb::Reader::from_source(&db[..]).unwrap();
    for alias in ["::ffff:5.1.0.1", "2002:501:1::", "2001:0:501:1::"] {
        let found = reader.lookup::<BTreeMap<String, serde_json::Value>>(alias.parse().unwrap()).unwrap();
        assert_eq!(found.unwrap()["country_code"], "DE", "{alias}");
    }
    // All countries: every network exactly once, IPv4 as IPv4.
    let all: Vec<CountryCode> = sg_geo::ISO_3166_ALPHA2.iter().map(|c| c.parse().unwrap()).collect();
    let got = load_country_prefixes_from_bytes(&db, &all).unwrap();
    assert_eq!(got.networks_read, ENTRIES.iter().filter(|e| !matches!(e.kind, Kind::NoCountry)).count());
    assert_eq!(got.networks_total, ENTRIES.len());
    let v4 = [
        "1.0.0.0/24",
        "5.1.0.0/22",
        "5.1.4.0/23",
        "8.8.8.0/24",
        "10.20.30.0/24",
        "80.0.0.0/16",
        "223.255.255.0/24",
    ];
    let v6 = ["240e::/20", "2600::/32", "2a00:2::/31", "2a01:cb00::/47", "2a02:1::/32"];
    assert_prefixes(&got, &v4, &v6);
}

/// A database that stores IPv4 at its mapped addresses (no `::/96` subtree, no aliasing).
#[test]
fn ipv4_mapped_networks_become_ipv4() {
    let mut db = writer(IpVersion::V6, Ipv4Aliasing::Disabled);
    db.insert("::ffff:200.1.0.0/120".parse::<IpNet>().unwrap(), &Flat { country_code: "DE", tag: None })
        .unwrap();
    db.insert("::ffff:0:0/97".parse::<IpNet>().unwrap(), &Flat { country_code: "FR", tag: None }).unwrap();
    db.insert("2a00:2::/32".parse::<IpNet>().unwrap(), &Flat { country_code: "DE", tag: None }).unwrap();
    let got = load_country_prefixes_from_bytes(&db.to_bytes().unwrap(), &codes("DE FR")).unwrap();
    assert_prefixes(&got, &["0.0.0.0/1", "200.1.0.0/24"], &["2a00:2::/32"]);
}

#[test]
fn empty_database() {
    let db = writer(IpVersion::V6, Ipv4Aliasing::Enabled).to_bytes().unwrap();
    let got = load_country_prefixes_from_bytes(&db, &codes("DE")).unwrap();
    assert_eq!(got, CountryPrefixes::default());
}

/// A temporary file, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("sg-geo-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn loads_from_file() {
    let file = TempFile::new("flat.mmdb", &flat_db(ENTRIES, IpVersion::V6));
    let got = load_country_prefixes(&file.0, &codes("FR,DE")).unwrap();
    assert_prefixes(&got, DE_FR_V4, DE_FR_V6);
}

#[test]
fn missing_file() {
    let path = Path::new("/nonexistent/sg-geo/GeoLite2-Country.mmdb");
    let err = load_country_prefixes(path, &codes("DE")).unwrap_err();
    assert!(matches!(&err, GeoError::NotFound { path: p, .. } if p == path), "{err:?}");
    assert_eq!(err.to_string(), "GeoIP database /nonexistent/sg-geo/GeoLite2-Country.mmdb does not exist");
}

#[test]
fn unreadable_file() {
    let dir = std::env::temp_dir();
    let err = load_country_prefixes(&dir, &codes("DE")).unwrap_err();
    assert!(matches!(&err, GeoError::Read { path, .. } if *path == dir), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with(&format!("cannot read GeoIP database {}: ", dir.display())), "{message}");
}

#[test]
fn garbage_file() {
    let file = TempFile::new("garbage.mmdb", b"this is not a MaxMind database\n");
    let err = load_country_prefixes(&file.0, &codes("DE")).unwrap_err();
    assert!(
        matches!(&err, GeoError::InvalidDatabase { origin: DbOrigin::File(p), .. } if *p == file.0),
        "{err:?}"
    );
    let message = err.to_string();
    let expected =
        format!("GeoIP database {} is corrupt or not a MaxMind DB (.mmdb) file: ", file.0.display());
    assert!(message.starts_with(&expected), "{message}");
    assert!(message.contains("metadata"), "{message}");
}

#[test]
fn garbage_bytes() {
    for bytes in [&b""[..], &[0u8; 4096], &[0xab; 100]] {
        let err = load_country_prefixes_from_bytes(bytes, &codes("DE")).unwrap_err();
        assert!(matches!(err, GeoError::InvalidDatabase { origin: DbOrigin::Memory, .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("in-memory GeoIP database is corrupt or not a MaxMind DB"),
            "{err}"
        );
    }
}

#[test]
fn truncated_database() {
    // The metadata sits at the end, so a truncated file has none.
    let db = flat_db(ENTRIES, IpVersion::V6);
    let err = load_country_prefixes_from_bytes(&db[..db.len() / 2], &codes("DE")).unwrap_err();
    assert!(matches!(err, GeoError::InvalidDatabase { .. }), "{err:?}");
}

#[test]
fn undecodable_record() {
    let mut db = writer(IpVersion::V6, Ipv4Aliasing::Enabled);
    db.insert("5.1.0.0/24".parse::<IpNet>().unwrap(), &Flat { country_code: "DE", tag: None }).unwrap();
    db.insert("5.1.1.0/24".parse::<IpNet>().unwrap(), &BTreeMap::from([("country_code", 49u32)])).unwrap();
    let file = TempFile::new("bad-record.mmdb", &db.to_bytes().unwrap());
    let err = load_country_prefixes(&file.0, &codes("DE")).unwrap_err();
    assert!(matches!(&err, GeoError::Record { origin: DbOrigin::File(p), .. } if *p == file.0), "{err:?}");
    let message = err.to_string();
    let expected = format!("GeoIP database {} has a record that cannot be decoded: ", file.0.display());
    assert!(message.starts_with(&expected), "{message}");

    // `country` must be a map.
    let mut db = writer(IpVersion::V6, Ipv4Aliasing::Enabled);
    db.insert("5.1.0.0/24".parse::<IpNet>().unwrap(), &BTreeMap::from([("country", "DE")])).unwrap();
    let err = load_country_prefixes_from_bytes(&db.to_bytes().unwrap(), &codes("DE")).unwrap_err();
    assert!(matches!(err, GeoError::Record { origin: DbOrigin::Memory, .. }), "{err:?}");
}

#[test]
fn not_a_country_database() {
    #[derive(Serialize)]
    struct Asn {
        autonomous_system_number: u32,
        autonomous_system_organization: &'static str,
    }
    let mut db = Writer::new("GeoLite2-ASN");
    let asn = Asn { autonomous_system_number: 13335, autonomous_system_organization: "CLOUDFLARENET" };
    db.insert("1.1.1.0/24".parse::<IpNet>().unwrap(), &asn).unwrap();
    let err = load_country_prefixes_from_bytes(&db.to_bytes().unwrap(), &codes("AU")).unwrap_err();
    assert!(matches!(err, GeoError::Unsupported { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("none of its 1 networks has a country code"), "{message}");
    assert!(message.contains("GeoLite2-ASN"), "{message}");
}

/// maxminddb 0.26 mis-iterates a tree where one record covers all of IPv4 (it would panic on
/// `::/0`, and skip IPv6 networks sharing the record of `0.0.0.0/0`); refuse such a tree.
#[test]
fn one_record_for_all_of_ipv4_is_refused() {
    for net in ["0.0.0.0/0", "::/0", "::/64"] {
        let mut db = writer(IpVersion::V6, Ipv4Aliasing::Enabled);
        db.insert(net.parse::<IpNet>().unwrap(), &Flat { country_code: "DE", tag: None }).unwrap();
        db.insert("2a00:2::/32".parse::<IpNet>().unwrap(), &Flat { country_code: "DE", tag: None }).unwrap();
        let err = load_country_prefixes_from_bytes(&db.to_bytes().unwrap(), &codes("DE")).unwrap_err();
        assert!(matches!(err, GeoError::Unsupported { .. }), "{net}: {err:?}");
        assert!(err.to_string().contains("whole IPv4 address space"), "{err}");
    }
    // In an IPv4 database that is fine.
    let mut db = writer(IpVersion::V4, Ipv4Aliasing::Enabled);
    db.insert("0.0.0.0/0".parse::<IpNet>().unwrap(), &Flat { country_code: "DE", tag: None }).unwrap();
    let got = load_country_prefixes_from_bytes(&db.to_bytes().unwrap(), &codes("DE")).unwrap();
    assert_prefixes(&got, &["0.0.0.0/0"], &[]);
}

#[test]
fn empty_country_list() {
    let db = flat_db(ENTRIES, IpVersion::V6);
    let err = load_country_prefixes_from_bytes(&db, &[]).unwrap_err();
    assert!(matches!(err, GeoError::NoCountries), "{err:?}");
    assert_eq!(err.to_string(), "no countries selected: the country list is empty");
    // Checked before the file is even opened.
    let err = load_country_prefixes(Path::new("/nonexistent.mmdb"), &[]).unwrap_err();
    assert!(matches!(err, GeoError::NoCountries), "{err:?}");
}

#[test]
fn unknown_country_code() {
    for code in ["XX", "ZZ"] {
        let err = code.parse::<CountryCode>().unwrap_err();
        assert_eq!(err, CountryCodeError::Unknown(code.into()));
        assert_eq!(
            err.to_string(),
            format!("unknown country code \"{code}\": not an assigned ISO 3166-1 alpha-2 code")
        );
    }
    let err = CountryCode::parse_list("DE, FR, XX").unwrap_err();
    assert_eq!(err, CountryCodeError::Unknown("XX".into()));
    let err = "DEU".parse::<CountryCode>().unwrap_err();
    assert_eq!(err, CountryCodeError::Malformed("DEU".into()));
    assert!(err.to_string().contains("\"DEU\""), "{err}");
}

#[test]
fn database_cut_at_the_front() {
    // The metadata at the end survives, but the search tree it describes is gone.
    let db = flat_db(ENTRIES, IpVersion::V6);
    let err = load_country_prefixes_from_bytes(&db[db.len() / 2..], &codes("DE")).unwrap_err();
    assert!(matches!(err, GeoError::InvalidDatabase { .. }), "{err:?}");
    assert!(err.to_string().contains("is larger than the file"), "{err}");
}

/// maxminddb's iterator would descend forever into a loop in the search tree.
#[test]
fn search_tree_with_a_loop() {
    let mut db = Writer::builder("sg-geo-test").record_size(RecordSize::Bits24).build_epoch(epoch()).build();
    insert_flat(&mut db, ENTRIES, false);
    let mut db = db.to_bytes().unwrap();
    // 24-bit records, 6 bytes a node: point the right record of node 3 back at the root.
    db[3 * 6 + 3..3 * 6 + 6].copy_from_slice(&[0, 0, 0]);
    let err = load_country_prefixes_from_bytes(&db, &codes("DE")).unwrap_err();
    assert!(matches!(err, GeoError::InvalidDatabase { .. }), "{err:?}");
    assert!(err.to_string().contains("its search tree is not a tree: node 0 is reached twice"), "{err}");
}

/// Every single-byte corruption of a small database gives a result or an error, never a panic
/// (maxminddb itself panics on some of them; the loader turns those into errors).
#[test]
fn corrupt_bytes_never_panic() {
    let db = flat_db(ENTRIES, IpVersion::V6);
    let (mut ok, mut failed) = (0, 0);
    for i in 0..db.len() {
        for value in [0x00, 0x5a, 0xff] {
            let mut corrupt = db.clone();
            corrupt[i] = value;
            match load_country_prefixes_from_bytes(&corrupt, &codes("DE,FR")) {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
        }
    }
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
}
