//! `Directory` and `File`: nodes of the operation graph; reads evaluate them and look inside
//! the resulting snapshot through a read-only view.

use super::enums::ExistsType;
use super::node::{load_directory, load_file};
use super::{solve_error, state};
use crate::snapshot::SnapshotId;
use crate::solver::fs::{self, with_root};
use crate::solver::id;
use crate::solver::node::{DirectoryNode, FileNode, FsChange};
use crate::sys::inroot::EntryKind;
use async_graphql::{Context, Object, Result, ID};
use std::io::Read;
use std::sync::Arc;

/// Cap on `File.contents`: the whole file travels in one JSON string.
const MAX_CONTENTS_BYTES: u64 = 128 << 20;

pub(crate) async fn exists_in(
    ctx: &Context<'_>,
    snapshot: Option<SnapshotId>,
    abs: String,
    expected: Option<ExistsType>,
    no_follow: bool,
) -> Result<bool> {
    with_root(state(ctx).solver.snapshotter(), snapshot, move |root| {
        Ok(match root.stat(&abs, !no_follow) {
            Ok(st) => match expected {
                None => true,
                Some(ExistsType::Regular) => st.kind == EntryKind::File,
                Some(ExistsType::Directory) => st.kind == EntryKind::Dir,
                Some(ExistsType::Symlink) => st.kind == EntryKind::Symlink,
            },
            Err(_) => false,
        })
    })
    .await
    .map_err(|e| solve_error(&e.into()))
}

/// Writes an evaluated tree on the client's disk through the request's session (see
/// `crate::session`) and returns the absolute path the client wrote.
pub(crate) async fn export_to_client(
    ctx: &Context<'_>,
    what: &str,
    tree: crate::solver::TreeRef,
    kind: crate::session::ExportKind,
    request: crate::session::ExportRequest,
) -> Result<String> {
    use crate::session::RequestSession;
    let none = RequestSession(None);
    let session = ctx
        .data_opt::<RequestSession>()
        .unwrap_or(&none)
        .require(what)
        .map_err(|e| super::classified(&e))?
        .clone();
    let op = crate::progress::start(&format!("{what} to {}", request.path), None);
    let source = crate::session::ExportSource {
        snapshots: state(ctx).solver.snapshotter().clone(),
        tree,
        kind,
    };
    let result = session.export(source, &request).await;
    op.finish(&result);
    result.map_err(|e| super::classified(&e))
}

/// Fails early, before any evaluation, when `what` cannot reach a client.
pub(crate) fn require_session(ctx: &Context<'_>, what: &str) -> Result<()> {
    use crate::session::RequestSession;
    match ctx.data_opt::<RequestSession>() {
        Some(s) => s.require(what).map(|_| ()),
        None => RequestSession(None).require(what).map(|_| ()),
    }
    .map_err(|e| super::classified(&e))
}

/// A directory.
#[derive(Clone)]
pub struct Directory(pub(crate) Arc<DirectoryNode>);

impl Directory {
    pub(crate) fn new(node: DirectoryNode) -> Self {
        Directory(Arc::new(node))
    }

    fn node(&self) -> Box<DirectoryNode> {
        Box::new((*self.0).clone())
    }

    fn changed(&self, change: FsChange) -> Directory {
        Directory::new(DirectoryNode::Changed {
            parent: self.node(),
            change,
        })
    }

    async fn tree(&self, ctx: &Context<'_>) -> Result<Arc<crate::solver::TreeRef>> {
        state(ctx)
            .solver
            .directory(&self.0)
            .await
            .map_err(|e| solve_error(&e))
    }
}

#[Object]
impl Directory {
    /// A unique identifier for this Directory.
    pub async fn id(&self) -> ID {
        ID(id::encode("Directory", &*self.0))
    }

    /// Force evaluation in the engine.
    async fn sync(&self, ctx: &Context<'_>) -> Result<ID> {
        self.tree(ctx).await?;
        Ok(ID(id::encode("Directory", &*self.0)))
    }

    /// Returns a list of files and directories at the given path.
    async fn entries(&self, ctx: &Context<'_>, path: Option<String>) -> Result<Vec<String>> {
        let t = self.tree(ctx).await?;
        let abs = fs::join(&t.path, path.as_deref().unwrap_or("."));
        with_root(
            state(ctx).solver.snapshotter(),
            t.snapshot.clone(),
            move |root| fs::entries(root, &abs),
        )
        .await
        .map_err(|e| solve_error(&e.into()))
    }

    /// Returns a list of files and directories that matche the given pattern.
    async fn glob(&self, ctx: &Context<'_>, pattern: String) -> Result<Vec<String>> {
        let t = self.tree(ctx).await?;
        let dir = t.path.clone();
        with_root(
            state(ctx).solver.snapshotter(),
            t.snapshot.clone(),
            move |root| fs::glob(root, &dir, &pattern),
        )
        .await
        .map_err(|e| solve_error(&e.into()))
    }

    /// Retrieves a directory at the given path.
    async fn directory(&self, path: String) -> Directory {
        Directory::new(DirectoryNode::Sub {
            parent: self.node(),
            path,
        })
    }

    /// Retrieves a file at the given path.
    async fn file(&self, path: String) -> File {
        File::new(FileNode::InDirectory {
            directory: self.node(),
            path,
        })
    }

    /// check if a file or directory exists
    async fn exists(
        &self,
        ctx: &Context<'_>,
        path: String,
        expected_type: Option<ExistsType>,
        #[graphql(default = false)] do_not_follow_symlinks: bool,
    ) -> Result<bool> {
        let t = self.tree(ctx).await?;
        let abs = fs::join(&t.path, &path);
        exists_in(
            ctx,
            t.snapshot.clone(),
            abs,
            expected_type,
            do_not_follow_symlinks,
        )
        .await
    }

    /// Returns the name of the directory.
    async fn name(&self, ctx: &Context<'_>) -> Result<String> {
        let t = self.tree(ctx).await?;
        Ok(format!(
            "{}/",
            t.path.rsplit('/').next().unwrap_or_default()
        ))
    }

    /// Return the directory's digest. The format of the digest is not guaranteed to be stable
    /// between releases of the engine.
    async fn digest(&self, ctx: &Context<'_>) -> Result<String> {
        state(ctx)
            .solver
            .directory_digest(&self.0)
            .await
            .map_err(|e| solve_error(&e))
    }

    /// Retrieves this directory plus a new file written at the given path.
    async fn with_new_file(
        &self,
        path: String,
        contents: String,
        #[graphql(default = 420)] permissions: i32,
    ) -> Directory {
        self.changed(FsChange::NewFile {
            path,
            contents,
            permissions,
            owner: String::new(),
        })
    }

    /// Retrieves this directory plus a new directory created at the given path.
    async fn with_new_directory(
        &self,
        path: String,
        #[graphql(default = 420)] permissions: i32,
    ) -> Directory {
        self.changed(FsChange::NewDirectory { path, permissions })
    }

    /// Retrieves this directory plus the contents of the given file copied to the given path.
    async fn with_file(
        &self,
        path: String,
        source: ID,
        permissions: Option<i32>,
        #[graphql(default)] owner: String,
    ) -> Result<Directory> {
        Ok(self.changed(FsChange::File {
            path,
            source: file_arg(&source)?,
            permissions,
            owner,
        }))
    }

    /// Retrieves this directory plus the contents of the given files copied to the given path.
    async fn with_files(
        &self,
        path: String,
        sources: Vec<ID>,
        permissions: Option<i32>,
    ) -> Result<Directory> {
        Ok(self.changed(FsChange::Files {
            path,
            sources: files_arg(&sources)?,
            permissions,
            owner: String::new(),
        }))
    }

    /// Retrieves this directory plus a directory written at the given path.
    #[allow(clippy::too_many_arguments)]
    async fn with_directory(
        &self,
        path: String,
        source: ID,
        #[graphql(default)] exclude: Vec<String>,
        #[graphql(default)] include: Vec<String>,
        #[graphql(default)] owner: String,
        permissions: Option<i32>,
    ) -> Result<Directory> {
        Ok(self.changed(FsChange::Directory {
            path,
            source: directory_arg(&source)?,
            include,
            exclude,
            owner,
            permissions,
        }))
    }

    /// Retrieves this directory with the file at the given path removed.
    async fn without_file(&self, path: String) -> Directory {
        self.changed(FsChange::Remove { paths: vec![path] })
    }

    /// Retrieves this directory with the files at the given paths removed.
    async fn without_files(&self, paths: Vec<String>) -> Directory {
        self.changed(FsChange::Remove { paths })
    }

    /// Retrieves this directory with the directory at the given path removed.
    async fn without_directory(&self, path: String) -> Directory {
        self.changed(FsChange::Remove { paths: vec![path] })
    }

    /// Return a snapshot with a symlink.
    async fn with_symlink(&self, target: String, link_name: String) -> Directory {
        self.changed(FsChange::Symlink { target, link_name })
    }

    /// Writes the contents of the directory to a path on the host.
    async fn export(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Location of the copied directory (e.g., \"logs/\").")] path: String,
        #[graphql(
            default = false,
            desc = "If true, then the host directory will be wiped clean before exporting so that it exactly matches the directory being exported; this means it will delete any files on the host that aren't in the exported dir. If false (the default), the contents of the directory will be merged with any existing contents of the host directory, leaving any existing files on the host that aren't in the exported directory alone."
        )]
        wipe: bool,
    ) -> Result<String> {
        require_session(ctx, "Directory.export")?;
        let t = self.tree(ctx).await?;
        export_to_client(
            ctx,
            "Directory.export",
            (*t).clone(),
            crate::session::ExportKind::Directory,
            crate::session::ExportRequest {
                path,
                wipe,
                allow_parent_dir_path: false,
            },
        )
        .await
    }

    /// Gets the difference between this directory and an another directory.
    async fn diff(&self, other: ID) -> Result<Directory> {
        Ok(Directory::new(DirectoryNode::Diff {
            lower: self.node(),
            upper: directory_arg(&other)?,
        }))
    }
}

/// An object argument that must be a Directory ID.
pub(crate) fn directory_arg(id: &ID) -> Result<Box<DirectoryNode>> {
    Ok(Box::new((*load_directory(id.as_str())?.0).clone()))
}

/// An object argument that must be a File ID.
pub(crate) fn file_arg(id: &ID) -> Result<Box<FileNode>> {
    Ok(Box::new((*load_file(id.as_str())?.0).clone()))
}

pub(crate) fn files_arg(ids: &[ID]) -> Result<Vec<FileNode>> {
    ids.iter().map(|id| file_arg(id).map(|f| *f)).collect()
}

/// A file.
#[derive(Clone)]
pub struct File(pub(crate) Arc<FileNode>);

impl File {
    pub(crate) fn new(node: FileNode) -> Self {
        File(Arc::new(node))
    }

    async fn tree(&self, ctx: &Context<'_>) -> Result<Arc<crate::solver::TreeRef>> {
        state(ctx)
            .solver
            .file(&self.0)
            .await
            .map_err(|e| solve_error(&e))
    }
}

#[Object]
impl File {
    /// A unique identifier for this File.
    pub async fn id(&self) -> ID {
        ID(id::encode("File", &*self.0))
    }

    /// Force evaluation in the engine.
    async fn sync(&self, ctx: &Context<'_>) -> Result<ID> {
        self.tree(ctx).await?;
        Ok(ID(id::encode("File", &*self.0)))
    }

    /// Retrieves the contents of the file.
    async fn contents(
        &self,
        ctx: &Context<'_>,
        offset_lines: Option<i32>,
        limit_lines: Option<i32>,
    ) -> Result<String> {
        let t = self.tree(ctx).await?;
        let path = t.path.clone();
        let text = with_root(
            state(ctx).solver.snapshotter(),
            t.snapshot.clone(),
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
        .map_err(|e| solve_error(&e.into()))?;
        if offset_lines.is_none() && limit_lines.is_none() {
            return Ok(text);
        }
        let skip = offset_lines.unwrap_or(0).max(0) as usize;
        let take = limit_lines.map(|l| l.max(0) as usize).unwrap_or(usize::MAX);
        Ok(text.split_inclusive('\n').skip(skip).take(take).collect())
    }

    /// Retrieves the size of the file, in bytes.
    async fn size(&self, ctx: &Context<'_>) -> Result<i64> {
        let t = self.tree(ctx).await?;
        let path = t.path.clone();
        let size = with_root(
            state(ctx).solver.snapshotter(),
            t.snapshot.clone(),
            move |root| fs::require_file(root, &path),
        )
        .await
        .map_err(|e| solve_error(&e.into()))?;
        Ok(size as i64)
    }

    /// Retrieves the name of the file.
    async fn name(&self, ctx: &Context<'_>) -> Result<String> {
        let t = self.tree(ctx).await?;
        Ok(t.path.rsplit('/').next().unwrap_or_default().to_string())
    }

    /// Writes the file to a file path on the host.
    async fn export(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Location of the written directory (e.g., \"output.txt\").")] path: String,
        #[graphql(
            default = false,
            desc = "If allowParentDirPath is true, the path argument can be a directory path, in which case the file will be created in that directory."
        )]
        allow_parent_dir_path: bool,
    ) -> Result<String> {
        require_session(ctx, "File.export")?;
        let t = self.tree(ctx).await?;
        export_to_client(
            ctx,
            "File.export",
            (*t).clone(),
            crate::session::ExportKind::File,
            crate::session::ExportRequest {
                path,
                wipe: false,
                allow_parent_dir_path,
            },
        )
        .await
    }

    /// Retrieves this file with its name set to the given name.
    async fn with_name(&self, name: String) -> File {
        File::new(FileNode::Renamed {
            file: Box::new((*self.0).clone()),
            name,
        })
    }

    /// Return the file's digest. The format of the digest is not guaranteed to be stable
    /// between releases of the engine; with `excludeMetadata` it is the sha256 of the contents.
    async fn digest(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = false)] exclude_metadata: bool,
    ) -> Result<String> {
        state(ctx)
            .solver
            .file_digest(&self.0, exclude_metadata)
            .await
            .map_err(|e| solve_error(&e))
    }
}
