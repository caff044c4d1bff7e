//! Resolving `USER` and `--chown` specs against an image's `/etc/passwd` and
//! `/etc/group`, as docker does.
//!
//! Names must exist in the image; numeric ids need not. For `--chown`, a user
//! name without a group takes its primary group from passwd and a numeric uid
//! without a group is also the gid (what BuildKit does); for `USER`, a user
//! without a group gets the primary group from passwd (0 when the uid is not
//! listed) plus every group that lists the user by name, and `HOME` from
//! passwd (`/` when unknown).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("invalid user spec {0:?}: empty user")]
    Empty(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// An image's user database (either file may be missing: empty lists).
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    pub users: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

/// The ids a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

impl UserDb {
    /// Parse the text of `/etc/passwd` and `/etc/group`; malformed lines are
    /// skipped, as libc does.
    pub fn parse(passwd: &str, group: &str) -> Self {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() < 7 {
                    return None;
                }
                Some(PasswdEntry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f[5].to_string(),
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() < 4 {
                    return None;
                }
                Some(GroupEntry {
                    name: f[0].to_string(),
                    gid: f[2].parse().ok()?,
                    members: f[3]
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect();
        UserDb { users, groups }
    }

    /// The uid a user spec names, and its passwd entry when there is one
    /// (a numeric uid need not be listed; a name must be).
    fn user(&self, spec: &str) -> Result<(u32, Option<&PasswdEntry>), UserError> {
        if let Ok(uid) = spec.parse::<u32>() {
            return Ok((uid, self.users.iter().find(|u| u.uid == uid)));
        }
        self.users
            .iter()
            .find(|u| u.name == spec)
            .map(|u| (u.uid, Some(u)))
            .ok_or_else(|| UserError::UnknownUser(spec.to_string()))
    }

    fn group(&self, spec: &str) -> Result<u32, UserError> {
        if let Ok(gid) = spec.parse::<u32>() {
            return Ok(gid);
        }
        self.groups
            .iter()
            .find(|g| g.name == spec)
            .map(|g| g.gid)
            .ok_or_else(|| UserError::UnknownGroup(spec.to_string()))
    }

    /// `--chown=user[:group]` → (uid, gid). Without a group, a user *name*
    /// takes its primary group from passwd and a numeric uid is also the gid
    /// (BuildKit's copy op looks names up and takes numbers as they are).
    /// An empty user is root and an empty group after `:` is group 0, as in
    /// BuildKit's copy op (`--chown=:staff`, `--chown=app:`).
    pub fn resolve_chown(&self, spec: &str) -> Result<(u32, u32), UserError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, entry) = if user.is_empty() {
            (0, None)
        } else {
            self.user(user)?
        };
        let numeric = user.parse::<u32>().is_ok();
        let gid = match (group, entry) {
            (Some(""), _) => 0,
            (Some(g), _) => self.group(g)?,
            (None, Some(u)) if !numeric => u.gid,
            (None, _) => uid,
        };
        Ok((uid, gid))
    }

    /// `USER user[:group]` → the ids, supplementary groups and HOME.
    pub fn resolve_user(&self, spec: &str) -> Result<ResolvedUser, UserError> {
        let (user, group) = split_spec(spec)?;
        let (uid, entry) = self.user(user)?;
        let gid = match group {
            Some(g) => self.group(g)?,
            None => entry.map_or(0, |u| u.gid),
        };
        // Supplementary groups only when no group was named, as docker does.
        let additional_gids = match (group, entry) {
            (None, Some(u)) => self
                .groups
                .iter()
                // Every group that lists the user, the primary one included
                // (runc's GetExecUser does not leave it out).
                .filter(|g| g.members.iter().any(|m| m == &u.name))
                .map(|g| g.gid)
                .collect(),
            _ => Vec::new(),
        };
        let home = entry.map_or_else(|| "/".to_string(), |u| u.home.clone());
        Ok(ResolvedUser {
            uid,
            gid,
            additional_gids,
            home,
        })
    }
}

fn split_spec(spec: &str) -> Result<(&str, Option<&str>), UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(UserError::Empty(spec.to_string()));
    }
    Ok((user, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> UserDb {
        UserDb::parse(
            "root:x:0:0:root:/root:/bin/sh\n\
             app:x:1000:1001:App:/home/app:/bin/sh\n\
             broken line\n",
            "root:x:0:\napp:x:1001:\nwheel:x:10:app,other\naudio:x:29:app\n",
        )
    }

    #[test]
    fn chown_names_and_numbers() {
        let db = db();
        // A name takes its primary group; a number is also the gid.
        assert_eq!(db.resolve_chown("app"), Ok((1000, 1001)));
        assert_eq!(db.resolve_chown("1000"), Ok((1000, 1000)));
        assert_eq!(db.resolve_chown("app:wheel"), Ok((1000, 10)));
        assert_eq!(db.resolve_chown("55"), Ok((55, 55)));
        assert_eq!(db.resolve_chown("55:66"), Ok((55, 66)));
        assert_eq!(db.resolve_chown("0:app"), Ok((0, 1001)));
        assert_eq!(
            db.resolve_chown("nobody"),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            db.resolve_chown("app:nogroup"),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
        // BuildKit: an empty user is root, an empty group is 0.
        assert_eq!(db.resolve_chown(":wheel"), Ok((0, 10)));
        assert_eq!(db.resolve_chown("app:"), Ok((1000, 0)));
    }

    #[test]
    fn user_gets_primary_and_supplementary_groups_and_home() {
        let db = db();
        let u = db.resolve_user("app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        assert_eq!(u.additional_gids, vec![10, 29]);
        assert_eq!(u.home, "/home/app");
        let u = db.resolve_user("1000:10").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        assert!(u.additional_gids.is_empty());
        let u = db.resolve_user("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
    }

    #[test]
    fn supplementary_groups_include_a_primary_group_that_lists_the_user() {
        let db = UserDb::parse(
            "app:x:1000:2000::/home/app:/bin/sh\n",
            "appgrp:x:2000:app\nstaff:x:3000:app\n",
        );
        let u = db.resolve_user("app").unwrap();
        assert_eq!((u.gid, u.additional_gids), (2000, vec![2000, 3000]));
    }

    #[test]
    fn missing_files_still_allow_numeric_ids() {
        let db = UserDb::default();
        assert_eq!(db.resolve_chown("7:8"), Ok((7, 8)));
        assert!(db.resolve_user("app").is_err());
    }
}
