//! Network vocabulary the configuration speaks: address prefixes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An address prefix such as `10.0.0.0/8` or `2001:db8::/32`, with the bits
/// past its length zero. A bare address is a host prefix (/32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// `addr/len`, refusing host bits set past `len` (a typo more often
    /// than not: `10.1.2.3/8` is not `10.0.0.0/8`).
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("/{len} is longer than {max} bits"));
        }
        let p = Prefix { addr, len }.masked();
        if p.addr != addr {
            return Err(format!(
                "{addr}/{len} has bits set past the prefix length: write {p}"
            ));
        }
        Ok(p)
    }

    fn masked(self) -> Prefix {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len)
                };
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len)
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        };
        Prefix {
            addr,
            len: self.len,
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn bits(&self) -> u8 {
        self.len
    }

    /// Whether this is the prefix of every address of its family.
    pub fn is_everything(&self) -> bool {
        self.len == 0
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies in this prefix (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Prefix {
                    addr: ip,
                    len: self.len,
                }
                .masked()
                .addr
                    == self.addr
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Prefix, String> {
        let bad =
            || format!("{s:?} is not an address prefix like \"192.0.2.0/24\" or \"2001:db8::/32\"");
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                let len: u8 = l.parse().map_err(|_| bad())?;
                (addr, len)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| bad())?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Prefix::new(addr, len)
    }
}

/// A list of prefixes looked up by address: the longest match wins (what
/// the XDP program's LPM trie does), so the dataplane and TCP workers judge
/// exactly as XDP does. Sorted once; a lookup is a scan of at most the
/// prefixes of the address's family, which lists of a few dozen keep cheap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixSet {
    v4: Vec<(u32, u8)>,
    v6: Vec<(u128, u8)>,
}

impl PrefixSet {
    pub fn new(prefixes: &[Prefix]) -> PrefixSet {
        let mut s = PrefixSet::default();
        for p in prefixes {
            match p.addr {
                IpAddr::V4(a) => s.v4.push((u32::from(a), p.len)),
                IpAddr::V6(a) => s.v6.push((u128::from(a), p.len)),
            }
        }
        // Longest first: the first match is the longest.
        s.v4.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        s.v6.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        s.v4.dedup();
        s.v6.dedup();
        s
    }

    /// Whether some prefix contains `ip`.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|(p, l)| {
                    let mask = if *l == 0 { 0 } else { u32::MAX << (32 - l) };
                    a & mask == *p
                })
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|(p, l)| {
                    let mask = if *l == 0 { 0 } else { u128::MAX << (128 - l) };
                    a & mask == *p
                })
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_print_and_contain() {
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert!(p("10.0.0.0/8").contains("10.200.1.1".parse().unwrap()));
        assert!(!p("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(
            !p("0.0.0.0/0").contains("::1".parse().unwrap()),
            "families apart"
        );
        assert!(p("::/0").contains("2001:db8::1".parse().unwrap()));
        assert!(p("fe80::/10").contains("febf::1".parse().unwrap()));
        assert!(!p("fe80::/10").contains("fec0::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "10.1.2.3/8",
            "x/8",
            "10.0.0.0/",
            "::/129",
            "",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
        let e = "10.1.2.3/8".parse::<Prefix>().unwrap_err();
        assert!(e.contains("write 10.0.0.0/8"), "{e}");
    }

    #[test]
    fn a_set_matches_any_of_its_prefixes() {
        let s = PrefixSet::new(&[p("10.0.0.0/8"), p("192.0.2.0/24"), p("fc00::/7")]);
        for yes in ["10.1.1.1", "192.0.2.255", "fd00::1"] {
            assert!(s.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["192.0.3.1", "8.8.8.8", "2001:db8::1"] {
            assert!(!s.contains(no.parse().unwrap()), "{no}");
        }
        assert!(!PrefixSet::new(&[]).contains("10.0.0.1".parse().unwrap()));
        assert!(PrefixSet::new(&[p("0.0.0.0/0")]).contains("1.2.3.4".parse().unwrap()));
    }
}
