//! `Directory` and `File`: trees and files inside a snapshot.

use super::enums::ExistsType;
use super::fs::{self, join, with_root};
use super::{classified, ApiState};
use crate::snapshot::SnapshotId;
use crate::sys::inroot::EntryKind;
use async_graphql::{Context, Object, Result};
use std::io::Read;
use std::sync::Arc;

/// Cap on `File.contents`: the whole file travels in one JSON string.
const MAX_CONTENTS_BYTES: u64 = 128 << 20;

/// A directory.
#[derive(Clone)]
pub struct Directory {
    snapshot: Option<SnapshotId>,
    /// Absolute path of this directory inside the snapshot.
    path: String,
}

impl Directory {
    pub(crate) fn new(snapshot: Option<SnapshotId>, path: String) -> Self {
        Directory { snapshot, path }
    }

    pub(crate) async fn exists_at(
        &self,
        ctx: &Context<'_>,
        abs: String,
        expected: Option<ExistsType>,
        no_follow: bool,
    ) -> Result<bool> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        with_root(
            state.images.snapshotter(),
            self.snapshot.clone(),
            move |root| {
                Ok(match root.stat(&abs, !no_follow) {
                    Ok(st) => match expected {
                        None => true,
                        Some(ExistsType::Regular) => st.kind == EntryKind::File,
                        Some(ExistsType::Directory) => st.kind == EntryKind::Dir,
                        Some(ExistsType::Symlink) => st.kind == EntryKind::Symlink,
                    },
                    Err(_) => false,
                })
            },
        )
        .await
        .map_err(|e| classified(&e))
    }
}

#[Object]
impl Directory {
    /// Returns a list of files and directories at the given path.
    async fn entries(&self, ctx: &Context<'_>, path: Option<String>) -> Result<Vec<String>> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let abs = join(&self.path, path.as_deref().unwrap_or("."));
        with_root(
            state.images.snapshotter(),
            self.snapshot.clone(),
            move |root| fs::entries(root, &abs),
        )
        .await
        .map_err(|e| classified(&e))
    }

    /// Returns a list of files and directories that matche the given pattern.
    async fn glob(&self, ctx: &Context<'_>, pattern: String) -> Result<Vec<String>> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let dir = self.path.clone();
        with_root(
            state.images.snapshotter(),
            self.snapshot.clone(),
            move |root| fs::glob(root, &dir, &pattern),
        )
        .await
        .map_err(|e| classified(&e))
    }

    /// Retrieves a directory at the given path.
    async fn directory(&self, ctx: &Context<'_>, path: String) -> Result<Directory> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let abs = join(&self.path, &path);
        let check = abs.clone();
        with_root(
            state.images.snapshotter(),
            self.snapshot.clone(),
            move |root| fs::require_dir(root, &check),
        )
        .await
        .map_err(|e| classified(&e))?;
        Ok(Directory::new(self.snapshot.clone(), abs))
    }

    /// Retrieves a file at the given path.
    async fn file(&self, ctx: &Context<'_>, path: String) -> Result<File> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let abs = join(&self.path, &path);
        let check = abs.clone();
        with_root(
            state.images.snapshotter(),
            self.snapshot.clone(),
            move |root| fs::require_file(root, &check),
        )
        .await
        .map_err(|e| classified(&e))?;
        Ok(File::new(self.snapshot.clone(), abs))
    }

    /// check if a file or directory exists
    async fn exists(
        &self,
        ctx: &Context<'_>,
        path: String,
        expected_type: Option<ExistsType>,
        #[graphql(default = false)] do_not_follow_symlinks: bool,
    ) -> Result<bool> {
        let abs = join(&self.path, &path);
        self.exists_at(ctx, abs, expected_type, do_not_follow_symlinks)
            .await
    }
}

/// A file.
#[derive(Clone)]
pub struct File {
    snapshot: Option<SnapshotId>,
    path: String,
}

impl File {
    pub(crate) fn new(snapshot: Option<SnapshotId>, path: String) -> Self {
        File { snapshot, path }
    }
}

#[Object]
impl File {
    /// Retrieves the contents of the file.
    async fn contents(
        &self,
        ctx: &Context<'_>,
        offset_lines: Option<i32>,
        limit_lines: Option<i32>,
    ) -> Result<String> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let path = self.path.clone();
        let text = with_root(
            state.images.snapshotter(),
            self.snapshot.clone(),
            move |root| {
                let size = fs::require_file(root, &path)?;
                if size > MAX_CONTENTS_BYTES {
                    return Err(fs::FsError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(format!(
                            "file is {size} bytes; contents returns at most {MAX_CONTENTS_BYTES}"
                        )),
                    });
                }
                let mut buf = Vec::with_capacity(size as usize);
                root.open_file(&path)
                    .and_then(|f| f.take(MAX_CONTENTS_BYTES).read_to_end(&mut buf))
                    .map_err(|e| fs::io_error(&path, e))?;
                Ok(String::from_utf8_lossy(&buf).into_owned())
            },
        )
        .await
        .map_err(|e| classified(&e))?;
        if offset_lines.is_none() && limit_lines.is_none() {
            return Ok(text);
        }
        let skip = offset_lines.unwrap_or(0).max(0) as usize;
        let take = limit_lines.map(|l| l.max(0) as usize).unwrap_or(usize::MAX);
        Ok(text.split_inclusive('\n').skip(skip).take(take).collect())
    }

    /// Retrieves the size of the file, in bytes.
    async fn size(&self, ctx: &Context<'_>) -> Result<i64> {
        let state = ctx.data_unchecked::<Arc<ApiState>>();
        let path = self.path.clone();
        let size = with_root(
            state.images.snapshotter(),
            self.snapshot.clone(),
            move |root| fs::require_file(root, &path),
        )
        .await
        .map_err(|e| classified(&e))?;
        Ok(size as i64)
    }

    /// Retrieves the name of the file.
    async fn name(&self) -> String {
        self.path.rsplit('/').next().unwrap_or_default().to_string()
    }
}
