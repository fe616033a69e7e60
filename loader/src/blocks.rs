//! Blocks added at run time (`xdpdns block add`), beside the configured
//! `[[block]]` list: each with an optional expiry. The loader puts the
//! union into the XDP program's policy tries (the inactive slot, then one
//! flip) whenever it changes or an entry expires.

use std::time::{Duration, Instant};

use xdpdns_common::config::BlockAction;
use xdpdns_common::net::Prefix;

/// More run-time blocks than this are refused (the policy tries hold
/// `MAX_POLICY_PREFIXES` with the configured ones).
pub const MAX_RUNTIME_BLOCKS: usize = 1024;

/// Longest `--for`: a day. Longer blocks belong in the configuration.
pub const MAX_BLOCK_FOR: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeBlock {
    pub prefix: Prefix,
    /// TCP to listen addresses dropped too.
    pub tcp: bool,
    /// What its UDP queries get.
    pub action: BlockAction,
    pub added: Instant,
    /// None: until deleted (or the loader restarts).
    pub until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct RuntimeBlocks {
    list: Vec<RuntimeBlock>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("{0} is exempt from limits in the configuration: one prefix, one policy")]
    Exempt(Prefix),
    #[error("at most {MAX_RUNTIME_BLOCKS} run-time blocks")]
    Full,
    #[error("--for at most {}s", MAX_BLOCK_FOR.as_secs())]
    TooLong,
    #[error("{0} is not blocked at run time")]
    NotBlocked(Prefix),
}

impl RuntimeBlocks {
    /// Blocks `prefix` from `now` for `duration` (None: until deleted);
    /// a prefix blocked already gets the new duration.
    pub fn add(
        &mut self,
        prefix: Prefix,
        duration: Option<Duration>,
        (tcp, action): (bool, BlockAction),
        exempt: &[Prefix],
        now: Instant,
    ) -> Result<(), BlockError> {
        if exempt.contains(&prefix) {
            return Err(BlockError::Exempt(prefix));
        }
        if duration.is_some_and(|d| d > MAX_BLOCK_FOR) {
            return Err(BlockError::TooLong);
        }
        let entry = RuntimeBlock {
            prefix,
            tcp,
            action,
            added: now,
            until: duration.map(|d| now + d),
        };
        let full = self.list.len() >= MAX_RUNTIME_BLOCKS;
        match self.list.iter_mut().find(|b| b.prefix == prefix) {
            Some(b) => *b = entry,
            None if full => return Err(BlockError::Full),
            None => self.list.push(entry),
        }
        Ok(())
    }

    pub fn remove(&mut self, prefix: Prefix) -> Result<(), BlockError> {
        let before = self.list.len();
        self.list.retain(|b| b.prefix != prefix);
        if self.list.len() == before {
            return Err(BlockError::NotBlocked(prefix));
        }
        Ok(())
    }

    /// Drops the entries expired at `now`; whether any was.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.list.len();
        self.list.retain(|b| b.until.is_none_or(|u| u > now));
        self.list.len() != before
    }

    #[cfg(test)]
    pub fn prefixes(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.list.iter().map(|b| b.prefix)
    }

    pub fn list(&self) -> &[RuntimeBlock] {
        &self.list
    }
}

/// "60s", "5m", "2h", "1d" or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a number with s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: a number with s, m, h or d")),
    };
    if secs == 0 {
        return Err(format!("{s:?}: at least one second"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_are_added_replaced_removed_and_expire() {
        let t0 = Instant::now();
        let mut b = RuntimeBlocks::default();
        b.add(
            p("198.51.100.0/24"),
            Some(Duration::from_secs(60)),
            (false, BlockAction::Drop),
            &[],
            t0,
        )
        .unwrap();
        b.add(
            p("2001:db8::/48"),
            None,
            (false, BlockAction::Drop),
            &[],
            t0,
        )
        .unwrap();
        assert_eq!(b.list().len(), 2);
        // Re-adding changes the expiry, not the count.
        b.add(
            p("198.51.100.0/24"),
            Some(Duration::from_secs(5)),
            (false, BlockAction::Drop),
            &[],
            t0,
        )
        .unwrap();
        assert_eq!(b.list().len(), 2);
        assert!(!b.expire(t0 + Duration::from_secs(4)));
        assert!(b.expire(t0 + Duration::from_secs(5)));
        assert_eq!(b.prefixes().collect::<Vec<_>>(), vec![p("2001:db8::/48")]);
        assert!(
            !b.expire(t0 + Duration::from_secs(1_000_000)),
            "no expiry: stays"
        );
        b.remove(p("2001:db8::/48")).unwrap();
        assert_eq!(
            b.remove(p("2001:db8::/48")),
            Err(BlockError::NotBlocked(p("2001:db8::/48")))
        );
    }

    #[test]
    fn bad_blocks_are_refused() {
        let t0 = Instant::now();
        let mut b = RuntimeBlocks::default();
        let exempt = [p("10.0.0.0/8")];
        assert_eq!(
            b.add(
                p("10.0.0.0/8"),
                None,
                (false, BlockAction::Drop),
                &exempt,
                t0
            ),
            Err(BlockError::Exempt(p("10.0.0.0/8")))
        );
        assert_eq!(
            b.add(
                p("10.1.0.0/16"),
                Some(Duration::from_secs(86_401)),
                (false, BlockAction::Drop),
                &[],
                t0
            ),
            Err(BlockError::TooLong)
        );
        for i in 0..MAX_RUNTIME_BLOCKS {
            let a = format!("10.{}.{}.0/24", i / 256, i % 256);
            b.add(p(&a), None, (false, BlockAction::Drop), &[], t0)
                .unwrap();
        }
        assert_eq!(
            b.add(p("192.0.2.0/24"), None, (false, BlockAction::Drop), &[], t0),
            Err(BlockError::Full)
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "0s", "s", "10x", "-5", "1.5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
