//! `[acl]`: who may use the service. Enforced in the XDP program (an LPM
//! trie, before any redirect) and, for the kernel path and TCP, by the same
//! list in the dataplanes and TCP workers.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::net::Prefix;

/// What happens to a query from a client outside the ACL.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    /// Nothing is sent back (the default: no reflection for spoofed sources).
    #[default]
    Drop,
    /// A REFUSED answer, built in the XDP program.
    Refused,
}

impl AclAction {
    pub fn name(self) -> &'static str {
        match self {
            AclAction::Drop => "drop",
            AclAction::Refused => "refused",
        }
    }
}

/// dnsdist's default: loopback, RFC 1918, CGNAT, link-local, ULA.
pub const DEFAULT_ALLOW: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AclSection {
    /// Client prefixes allowed; `["0.0.0.0/0", "::/0"]` serves everyone.
    #[serde(default = "default_allow")]
    pub allow: Vec<String>,
    #[serde(default)]
    pub action: AclAction,
}

impl Default for AclSection {
    fn default() -> Self {
        AclSection {
            allow: default_allow(),
            action: AclAction::Drop,
        }
    }
}

fn default_allow() -> Vec<String> {
    DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect()
}

/// The ACL in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub allow: Vec<Prefix>,
    pub action: AclAction,
}

/// More prefixes than this do not fit the XDP program's trie.
pub const MAX_ACL_PREFIXES: usize = 4096;

impl AclSection {
    pub(super) fn compile(&self) -> Result<Acl, ConfigError> {
        if self.allow.len() > MAX_ACL_PREFIXES {
            return Err(ConfigError::invalid(
                "acl.allow",
                format!("at most {MAX_ACL_PREFIXES} prefixes"),
            ));
        }
        let mut allow = Vec::with_capacity(self.allow.len());
        for (i, s) in self.allow.iter().enumerate() {
            let p: Prefix = s
                .parse()
                .map_err(|e| ConfigError::invalid(format!("acl.allow[{i}]"), e))?;
            if !allow.contains(&p) {
                allow.push(p);
            }
        }
        Ok(Acl {
            allow,
            action: self.action,
        })
    }
}

impl Acl {
    /// Whether every IPv4 and every IPv6 client is allowed.
    pub fn open_to_everyone(&self) -> bool {
        self.allow.iter().any(|p| p.is_everything() && p.is_ipv4())
            && self.allow.iter().any(|p| p.is_everything() && !p.is_ipv4())
    }

    /// Whether some family is open to every address.
    pub fn open_to_a_family(&self) -> bool {
        self.allow.iter().any(|p| p.is_everything())
    }

    pub fn describe(&self) -> String {
        if self.allow.is_empty() {
            return format!("nobody (action {:?})", self.action).to_lowercase();
        }
        let list: Vec<String> = self.allow.iter().map(|p| p.to_string()).collect();
        format!(
            "{} (others: {})",
            list.join(", "),
            match self.action {
                AclAction::Drop => "dropped",
                AclAction::Refused => "REFUSED",
            }
        )
    }
}
