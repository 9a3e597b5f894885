//! The exec user: `""`, `uid`, `uid:gid`, `name`, `name:group` (and mixes), resolved against
//! the rootfs `/etc/passwd` and `/etc/group` the way runc's `user.GetExecUser` does, with
//! BuildKit's shortcut that a numeric `uid:gid` needs no lookup.

/// The largest id runc accepts (`math.MaxInt32`).
const MAX_ID: u32 = i32::MAX as u32;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// The primary gid first, then the supplementary groups the user is a member of.
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// The name and the fields after the password of each `name:password:...` line of an
/// `/etc/passwd` or `/etc/group` file; blank lines, comments and lines without a password
/// field are skipped.
fn records(text: &str) -> impl Iterator<Item = (&str, std::str::Split<'_, char>)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        Some((name, f))
    })
}

/// Lines that don't parse are skipped (runc would read their ids as 0: never a good idea).
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    records(text).filter_map(|(name, mut f)| {
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    records(text).filter_map(|(name, mut f)| {
        let gid = f.next()?.parse().ok()?;
        let members = f
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        Some(GroupEntry { name, gid, members })
    })
}

fn numeric(s: &str) -> Option<Result<u32, String>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.parse::<u32>()
            .ok()
            .filter(|id| *id <= MAX_ID)
            .ok_or_else(|| format!("id {s} is out of range (0 to {MAX_ID})")),
    )
}

/// Resolves `spec` against the given `/etc/passwd` and `/etc/group` texts (`None`: the file is
/// missing). The error says what could not be found.
pub fn resolve(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, String> {
    let with_primary = |uid: u32, gid: u32, sgids: Vec<u32>| {
        let mut additional_gids = vec![gid];
        for g in sgids {
            if !additional_gids.contains(&g) {
                additional_gids.push(g);
            }
        }
        ResolvedUser {
            uid,
            gid,
            additional_gids,
        }
    };
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if spec.is_empty() {
        return Ok(with_primary(0, 0, Vec::new()));
    }
    if let (Some(uid), Some(Some(gid))) = (numeric(user_arg), group_arg.map(numeric)) {
        return Ok(with_primary(uid?, gid?, Vec::new()));
    }

    let uid_arg = numeric(user_arg).transpose()?;
    let mut uid = 0;
    let mut gid = 0;
    let mut matched_name = None;
    let found = passwd.and_then(|text| {
        passwd_entries(text).find(|e| match uid_arg {
            _ if user_arg.is_empty() => e.uid == 0,
            Some(n) => e.uid == n,
            None => e.name == user_arg,
        })
    });
    match (found, uid_arg) {
        (Some(e), _) => {
            uid = e.uid;
            gid = e.gid;
            matched_name = Some(e.name.to_string());
        }
        (None, Some(n)) => uid = n,
        (None, None) if user_arg.is_empty() => {}
        (None, None) => {
            return Err(format!(
                "unable to find user {user_arg}: no matching entries in passwd file{}",
                if passwd.is_none() {
                    " (the image has no /etc/passwd)"
                } else {
                    ""
                }
            ))
        }
    }

    let mut sgids = Vec::new();
    match group_arg {
        Some(g) if !g.is_empty() => {
            let gid_arg = numeric(g).transpose()?;
            let found = group.and_then(|text| {
                group_entries(text).find(|e| match gid_arg {
                    Some(n) => e.gid == n,
                    None => e.name == g,
                })
            });
            gid = match (found, gid_arg) {
                (Some(e), _) => e.gid,
                (None, Some(n)) => n,
                (None, None) => {
                    return Err(format!(
                        "unable to find group {g}: no matching entries in group file{}",
                        if group.is_none() {
                            " (the image has no /etc/group)"
                        } else {
                            ""
                        }
                    ))
                }
            };
        }
        _ => {
            // Supplementary groups only come with the implicit form (no group given).
            if let (Some(name), Some(text)) = (&matched_name, group) {
                sgids = group_entries(text)
                    .filter(|e| e.members.iter().any(|m| m == name))
                    .map(|e| e.gid)
                    .collect();
            }
        }
    }
    Ok(with_primary(uid, gid, sgids))
}
