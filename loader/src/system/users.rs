//! Resolving the dataplane user and group.

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
        "dataplane.user: no user {0:?} on this system: create it (e.g. `useradd --system {0}`) or name another"
    )]
    NoUser(String),
    #[error("dataplane.group: no group {0:?} on this system")]
    NoGroup(String),
    #[error("dataplane.user: {0:?} has uid 0; dataplanes must not run as root")]
    Root(String),
    #[error("cannot read the user database: {0}")]
    Lookup(#[from] nix::Error),
}

pub fn resolve(user: &str, group: Option<&str>) -> Result<Account, UserError> {
    let u = User::from_name(user)?.ok_or_else(|| UserError::NoUser(user.into()))?;
    if u.uid.is_root() {
        return Err(UserError::Root(user.into()));
    }
    let gid = match group {
        Some(g) => {
            Group::from_name(g)?
                .ok_or_else(|| UserError::NoGroup(g.into()))?
                .gid
        }
        None => u.gid,
    };
    if gid.as_raw() == 0 {
        return Err(UserError::Root(user.into()));
    }
    Ok(Account {
        name: user.into(),
        uid: u.uid.as_raw(),
        gid: gid.as_raw(),
    })
}
