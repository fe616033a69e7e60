//! The few sysctls the plan is checked against, read from this network
//! namespace's /proc/sys.

use std::ops::RangeInclusive;

const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The ports the kernel picks ephemeral (source) ports from; it covers
/// IPv6 too.
pub fn local_port_range() -> Result<RangeInclusive<u16>, String> {
    let text = std::fs::read_to_string(LOCAL_PORT_RANGE)
        .map_err(|e| format!("cannot read {LOCAL_PORT_RANGE}: {e}"))?;
    parse_port_range(&text).ok_or_else(|| format!("{LOCAL_PORT_RANGE}: unexpected {text:?}"))
}

fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut words = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi)), None) = (words.next(), words.next(), words.next()) else {
        return None;
    };
    Some(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_range_parses_and_this_machine_has_one() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("a b"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("1 70000"), None);
        let r = local_port_range().unwrap();
        assert!(r.start() <= r.end());
    }
}
