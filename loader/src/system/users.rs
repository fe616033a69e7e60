//! Resolving the workers' users and groups.

use nix::unistd::{Group, User};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "{section}.user: no user {user:?} on this system: create it (e.g. `useradd --system {user}`) or name another"
    )]
    NoUser { section: &'static str, user: String },
    #[error("{section}.group: no group {group:?} on this system")]
    NoGroup {
        section: &'static str,
        group: String,
    },
    #[error("{section}.user: {user:?} has uid or gid 0; workers must not run as root")]
    Root { section: &'static str, user: String },
    #[error("cannot read the user database: {0}")]
    Lookup(#[from] nix::Error),
}

/// The account of `[section] user` (and `group`).
pub fn resolve(
    section: &'static str,
    user: &str,
    group: Option<&str>,
) -> Result<Account, UserError> {
    let u = User::from_name(user)?.ok_or_else(|| UserError::NoUser {
        section,
        user: user.into(),
    })?;
    let root = || UserError::Root {
        section,
        user: user.into(),
    };
    if u.uid.is_root() {
        return Err(root());
    }
    let gid = match group {
        Some(g) => {
            Group::from_name(g)?
                .ok_or_else(|| UserError::NoGroup {
                    section,
                    group: g.into(),
                })?
                .gid
        }
        None => u.gid,
    };
    if gid.as_raw() == 0 {
        return Err(root());
    }
    Ok(Account {
        name: user.into(),
        uid: u.uid.as_raw(),
        gid: gid.as_raw(),
    })
}
