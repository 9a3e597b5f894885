//! The init binary mounted at `/.init`. It runs inside arbitrary root filesystems, so it must
//! be a static executable: a dynamic one (Debian's `/usr/bin/tini`, not `tini-static`) would
//! fail in every image without its libc, with a baffling "no such file or directory".

use std::io::Read;
use std::path::Path;

const PT_INTERP: u32 = 3;

/// Checks that `path` is an executable regular file and a static ELF.
pub(crate) fn check(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            "not found (install the Debian package `tini`, which provides /usr/bin/tini-static, \
             or point the executor at another static init)"
                .to_string()
        } else {
            e.to_string()
        }
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err("not an executable file".into());
    }
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .map_err(|e| e.to_string())?;
    match elf_has_interpreter(&head) {
        Some(false) => Ok(()),
        Some(true) => Err("is dynamically linked; the init must be a static binary".into()),
        None => Err("is not an ELF executable".into()),
    }
}

/// Whether the ELF image starting with `head` asks for a program interpreter (is dynamically
/// linked). `None` if it is not ELF. Program headers beyond `head` count as none.
pub(crate) fn elf_has_interpreter(head: &[u8]) -> Option<bool> {
    if head.len() < 52 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = match head[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let le = match head[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let uint = |at: usize, len: usize| -> Option<u64> {
        let b = head.get(at..at.checked_add(len)?)?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if le { b[len - 1 - i] } else { b[i] };
            v = v << 8 | u64::from(byte);
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (uint(32, 8)?, uint(54, 2)?, uint(56, 2)?)
    } else {
        (uint(28, 4)?, uint(42, 2)?, uint(44, 2)?)
    };
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let Some(p_type) = usize::try_from(at).ok().and_then(|at| uint(at, 4)) else {
            break;
        };
        if p_type == u64::from(PT_INTERP) {
            return Some(true);
        }
    }
    Some(false)
}
