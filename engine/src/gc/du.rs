//! Disk usage of a directory tree, as `du` counts it: allocated blocks, each inode once, without
//! crossing into other filesystems (a mount below the tree is not ours to count).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes allocated to everything below `root` (0 when it cannot be read). Unreadable entries
/// are skipped: this is an estimate for the collector, never a reason to fail.
pub fn disk_usage(root: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut total = top.blocks() * 512;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.metadata() else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue; // another name of an inode already counted
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_once_per_inode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 64 << 10]).unwrap();
        let one = disk_usage(dir.path());
        std::fs::hard_link(dir.path().join("sub/a"), dir.path().join("b")).unwrap();
        let linked = disk_usage(dir.path());
        assert!(one >= 64 << 10, "{one}");
        assert_eq!(one, linked, "a hard link adds no data");
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
