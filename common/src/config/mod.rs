//! The TOML configuration: its types, defaults and validation.
//!
//! [`Config::from_toml`] is the only way in: it parses with unknown keys
//! rejected and then validates, so a `Config` value is always usable. Every
//! error names the key at fault and what to do about it.

mod abuse;
mod acl;
mod backends;
mod cache;
mod queues;
mod rules;
mod split;
mod tcp;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use abuse::{
    Abuse, BlockAction, Counted, DynamicRule, LimitAction, MAX_POLICY_PREFIXES, MAX_SUFFIX_RULES,
    RateLimit, SuffixTally, TallySpec,
};
pub use acl::{Acl, AclAction, DEFAULT_ALLOW, MAX_ACL_PREFIXES};
pub use backends::{
    BackendConfig, DEFAULT_POOL, FailAction, HealthConfig, Policy, PoolConfig, parse_mac,
};
pub use cache::{CacheTtls, MAX_CACHE_ENTRIES};
pub use queues::QueueSelection;
pub use rules::{
    Action, AnswerSpec, EdnsMatch, MAX_NAME_FILE_BYTES, MAX_NAME_FILE_ENTRIES, MAX_RULES,
    NameEntry, NameList, RuleConfig, RuleSpec, SelectorSpec, SoaSpec, SpoofRecord, TYPE_A,
    TYPE_AAAA, TYPE_CNAME, TYPE_SOA, TYPE_TXT, TransportMatch, contract, opcode_from_name,
    parse_name_file, qclass_from_name, rule_map,
};
pub use split::{
    Config, DataplaneFixed, DataplaneLive, Fixed, ForwardingFixed, ForwardingLive, Live, XdpFixed,
    XdpLive, XskFixed, XskLive,
};
pub use tcp::{TcpFixed, TcpLimits};
pub use types::{
    ControlSection, Listen, MetricsSection, SupervisorSection, TxAnswers, XdpMode, XskBindMode,
};

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file is not valid TOML, or has an unknown key or a value of the
    /// wrong type. The message carries the line and column.
    #[error("{0}")]
    Syntax(String),
    /// A value is well-formed but not acceptable.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A TOML error as "line L, column C: message" — never quoting the file,
/// which may be something other than a configuration (a reload names only
/// the configured path, but an error message still must not echo content).
fn syntax(text: &str, e: &toml::de::Error) -> ConfigError {
    let at = match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("line {line}, column {col}: ")
        }
        None => String::new(),
    };
    ConfigError::Syntax(format!("{at}{}", e.message().trim_end()))
}

impl Config {
    /// Parses and validates a configuration file's text.
    /// Rules may not name a `qname_file` (see [`Config::from_toml_with`]).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with(text, &|_| Err("files are read by the loader only".into()))
    }

    /// Parses and validates a configuration file's text; `read` returns the
    /// text of a rule's `qname_file` (this crate does no I/O).
    pub fn from_toml_with(
        text: &str,
        read: &dyn Fn(&std::path::Path) -> Result<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut file: types::File = toml::from_str(text).map_err(|e| syntax(text, &e))?;
        for (i, rule) in file.rule.iter_mut().enumerate() {
            rules::load_files(i, rule, read)?;
        }
        file.validate()?;
        Ok(file.into())
    }
}
