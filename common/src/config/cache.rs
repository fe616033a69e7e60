//! `[cache]`: the packet cache shared by every queue (off unless `entries`
//! is set). Its size is fixed for the instance's life; its TTL bounds
//! apply on reload.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Most entries a cache holds (1 KiB each: 16 GiB).
pub const MAX_CACHE_ENTRIES: u32 = 1 << 24;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheSection {
    /// Entries (rounded up to a power of two); 0: no cache.
    #[serde(default)]
    pub entries: u32,
    #[serde(default = "default_max_ttl")]
    pub max_ttl: u32,
    #[serde(default)]
    pub min_ttl: u32,
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: u32,
    #[serde(default = "default_servfail_ttl")]
    pub servfail_ttl: u32,
    #[serde(default)]
    pub stale_ttl: u32,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            entries: 0,
            max_ttl: default_max_ttl(),
            min_ttl: 0,
            negative_ttl: default_negative_ttl(),
            servfail_ttl: default_servfail_ttl(),
            stale_ttl: 0,
        }
    }
}

fn default_max_ttl() -> u32 {
    86_400
}

fn default_negative_ttl() -> u32 {
    3_600
}

fn default_servfail_ttl() -> u32 {
    5
}

/// How long answers stay, as a reload applies it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheTtls {
    /// An answer's lifetime is its smallest TTL, raised to `min` and
    /// lowered to `max`.
    pub min: u32,
    pub max: u32,
    /// NXDOMAIN and NODATA: the SOA's TTL and MINIMUM (RFC 2308 §5), at
    /// most this; without an SOA they are not cached.
    pub negative: u32,
    /// SERVFAIL: this long (0: not cached).
    pub servfail: u32,
    /// An expired answer is served this long after expiry while its pool
    /// is down (0: never), with TTL 0.
    pub stale: u32,
}

impl CacheSection {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.entries > MAX_CACHE_ENTRIES {
            return Err(ConfigError::invalid(
                "cache.entries",
                format!("at most {MAX_CACHE_ENTRIES} (0: no cache)"),
            ));
        }
        if self.max_ttl == 0 {
            return Err(ConfigError::invalid(
                "cache.max_ttl",
                "at least 1 (entries = 0 turns the cache off)",
            ));
        }
        if self.min_ttl > self.max_ttl {
            return Err(ConfigError::invalid(
                "cache.min_ttl",
                format!("at most max_ttl ({})", self.max_ttl),
            ));
        }
        for (key, v) in [
            ("cache.max_ttl", self.max_ttl),
            ("cache.negative_ttl", self.negative_ttl),
            ("cache.servfail_ttl", self.servfail_ttl),
            ("cache.stale_ttl", self.stale_ttl),
        ] {
            if v > 7 * 86_400 {
                return Err(ConfigError::invalid(key, "at most a week (604800)"));
            }
        }
        Ok(())
    }

    pub(crate) fn ttls(&self) -> CacheTtls {
        CacheTtls {
            min: self.min_ttl,
            max: self.max_ttl,
            negative: self.negative_ttl,
            servfail: self.servfail_ttl,
            stale: self.stale_ttl,
        }
    }

    /// Entries the shared table has: a power of two of at least a bucket's
    /// worth, or 0.
    pub(crate) fn slots(&self) -> u32 {
        if self.entries == 0 {
            0
        } else {
            self.entries
                .next_power_of_two()
                .max(crate::cache::WAYS as u32)
        }
    }
}
