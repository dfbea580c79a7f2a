//! ISO 3166-1 alpha-2 country codes.

use core::fmt;
use core::str::FromStr;
use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The countries blocked when the operator does not choose any.
pub const DEFAULT_BLOCKED: [&str; 7] = ["CN", "DE", "FR", "KR", "NL", "PL", "RU"];

/// Every officially assigned ISO 3166-1 alpha-2 code (249 of them), sorted.
///
/// User-assigned codes that some GeoIP databases use (`XK` for Kosovo, `EU`, `AP`, `ZZ`) are
/// deliberately absent: they are not ISO country codes.
pub const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", // A
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", // B
    "BT", "BV", "BW", "BY", "BZ", // B
    "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", // C
    "CX", "CY", "CZ", // C
    "DE", "DJ", "DK", "DM", "DO", "DZ", // D
    "EC", "EE", "EG", "EH", "ER", "ES", "ET", // E
    "FI", "FJ", "FK", "FM", "FO", "FR", // F
    "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", // G
    "GU", "GW", "GY", // G
    "HK", "HM", "HN", "HR", "HT", "HU", // H
    "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", // I
    "JE", "JM", "JO", "JP", // J
    "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", // K
    "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", // L
    "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", // M
    "MT", "MU", "MV", "MW", "MX", "MY", "MZ", // M
    "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", // N
    "OM", // O
    "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", // P
    "QA", // Q
    "RE", "RO", "RS", "RU", "RW", // R
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", // S
    "ST", "SV", "SX", "SY", "SZ", // S
    "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", // T
    "UA", "UG", "UM", "US", "UY", "UZ", // U
    "VA", "VC", "VE", "VG", "VI", "VN", "VU", // V
    "WF", "WS", // W
    "YE", "YT", // Y
    "ZA", "ZM", "ZW", // Z
];

/// A country, as a validated ISO 3166-1 alpha-2 code in upper case (`DE`, `CN`, ...).
///
/// Parsing accepts either case (`"de"` gives `DE`) but only codes listed in
/// [`ISO_3166_ALPHA2`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

/// Why a string is not a [`CountryCode`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CountryCodeError {
    #[error("malformed country code {0:?}: expected two letters (ISO 3166-1 alpha-2, e.g. \"DE\")")]
    Malformed(String),
    #[error("unknown country code {0:?}: not an assigned ISO 3166-1 alpha-2 code")]
    Unknown(String),
}

impl CountryCode {
    /// The two upper-case ASCII letters.
    pub const fn as_bytes(self) -> [u8; 2] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from two validated upper-case ASCII letters.
        core::str::from_utf8(&self.0).expect("country codes are ASCII")
    }

    /// The countries of [`DEFAULT_BLOCKED`].
    pub fn default_blocked() -> Vec<CountryCode> {
        DEFAULT_BLOCKED.iter().map(|code| code.parse().expect("DEFAULT_BLOCKED holds ISO codes")).collect()
    }

    /// Parses a list such as `"CN, de,RU"` (commas and/or whitespace between codes), sorted and
    /// without duplicates.
    pub fn parse_list(list: &str) -> Result<Vec<CountryCode>, CountryCodeError> {
        let mut codes = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<CountryCode>, _>>()?;
        codes.sort_unstable();
        codes.dedup();
        Ok(codes)
    }
}

impl FromStr for CountryCode {
    type Err = CountryCodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let code = match s.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                [a.to_ascii_uppercase(), b.to_ascii_uppercase()]
            }
            _ => return Err(CountryCodeError::Malformed(s.to_owned())),
        };
        let upper = core::str::from_utf8(&code).expect("ASCII");
        if ISO_3166_ALPHA2.binary_search(&upper).is_err() {
            return Err(CountryCodeError::Unknown(s.to_owned()));
        }
        Ok(CountryCode(code))
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({:?})", self.as_str())
    }
}

impl Serialize for CountryCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CountryCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_list_is_sorted_unique_and_well_formed() {
        assert!(ISO_3166_ALPHA2.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        for code in ISO_3166_ALPHA2 {
            assert!(code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()), "{code}");
        }
    }

    #[test]
    fn parses_and_normalises_case() {
        assert_eq!("DE".parse::<CountryCode>().unwrap().as_str(), "DE");
        assert_eq!("de".parse::<CountryCode>().unwrap().as_str(), "DE");
        assert_eq!("uS".parse::<CountryCode>().unwrap().as_bytes(), *b"US");
        assert_eq!(format!("{:?}", "gb".parse::<CountryCode>().unwrap()), "CountryCode(\"GB\")");
    }

    #[test]
    fn rejects_unknown_and_malformed_codes() {
        for code in ["XX", "ZZ", "XK", "EU", "UK", "zz"] {
            let err = code.parse::<CountryCode>().unwrap_err();
            assert_eq!(err, CountryCodeError::Unknown(code.to_owned()));
            assert!(err.to_string().contains(&format!("\"{code}\"")), "{err}");
        }
        for code in ["", "D", "DEU", "D1", "1D", " DE", "DE ", "Ä", "ÄÖ", "--"] {
            let err = code.parse::<CountryCode>().unwrap_err();
            assert_eq!(err, CountryCodeError::Malformed(code.to_owned()));
        }
    }

    #[test]
    fn default_blocked_are_valid() {
        let codes = CountryCode::default_blocked();
        assert_eq!(codes.iter().map(|c| c.as_str()).collect::<Vec<_>>(), DEFAULT_BLOCKED);
    }

    #[test]
    fn parse_list_sorts_and_dedups() {
        let codes = CountryCode::parse_list(" ru,CN  de, RU\tcn ").unwrap();
        assert_eq!(codes.iter().map(CountryCode::to_string).collect::<Vec<_>>(), ["CN", "DE", "RU"]);
        assert_eq!(CountryCode::parse_list("").unwrap(), []);
        assert_eq!(CountryCode::parse_list("DE,XX"), Err(CountryCodeError::Unknown("XX".into())));
    }

    #[test]
    fn serde_round_trip() {
        let codes: Vec<CountryCode> = serde_json::from_str(r#"["DE", "fr"]"#).unwrap();
        assert_eq!(serde_json::to_string(&codes).unwrap(), r#"["DE","FR"]"#);
        let err = serde_json::from_str::<CountryCode>(r#""ZZ""#).unwrap_err();
        assert!(err.to_string().contains("unknown country code \"ZZ\""), "{err}");
    }
}
