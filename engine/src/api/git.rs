//! `GitRepository` and `GitRef`: remote repositories and the refs in them. Refs resolve
//! through one `ls-remote` per repository object; `tree` checks the commit out (once per run)
//! and returns it as a directory.

use super::directory::Directory;
use super::{classified, gql_error, state};
use crate::error::ErrorKind;
use crate::git::{is_commit_sha, GitError, GitRemote, Ref, RemoteRefs};
use crate::solver::node::DirectoryNode;
use async_graphql::{Context, Object, Result};
use std::sync::Arc;

struct RepoState {
    remote: GitRemote,
    /// `Query.git(keepGitDir: false)` (deprecated) discards `.git` from every tree.
    discard_git_dir: bool,
    /// The remote's refs, listed on first use and shared by every field of this object.
    refs: tokio::sync::OnceCell<Arc<RemoteRefs>>,
}

/// A git repository.
#[derive(Clone)]
pub struct GitRepository(Arc<RepoState>);

/// `Query.git(httpAuthUsername, httpAuthToken, httpAuthHeader)`.
pub(crate) struct HttpAuthArgs {
    pub username: String,
    pub token: Option<super::Secret>,
    pub header: Option<super::Secret>,
}

impl HttpAuthArgs {
    /// The secrets' values, as git will send them; `None` when no secret was given. A header
    /// wins over a token, as in Dagger.
    fn credentials(self, ctx: &Context<'_>) -> Result<Option<crate::git::HttpCredentials>> {
        let value = |secret: &super::Secret, what: &str| -> Result<String> {
            let bytes = state(ctx)
                .solver
                .secret_plaintext(&secret.0)
                .map_err(|e| super::solve_error(&e))?;
            String::from_utf8(bytes).map_err(|_| {
                gql_error(
                    ErrorKind::InvalidArgument,
                    format!("the {what} secret is not UTF-8 text"),
                )
            })
        };
        if let Some(header) = &self.header {
            return Ok(Some(crate::git::HttpCredentials::Header(value(
                header,
                "httpAuthHeader",
            )?)));
        }
        if let Some(token) = &self.token {
            return Ok(Some(crate::git::HttpCredentials::Token {
                username: self.username,
                token: value(token, "httpAuthToken")?,
            }));
        }
        Ok(None)
    }
}

impl GitRepository {
    /// `Query.git`: validates the URL now (a bad URL fails here, not at the first ref).
    pub(crate) async fn open(
        ctx: &Context<'_>,
        url: &str,
        keep_git_dir: bool,
        ssh_known_hosts: &str,
        auth: HttpAuthArgs,
        ssh_agent: Option<super::Socket>,
    ) -> Result<Self> {
        let credentials = auth.credentials(ctx)?;
        let ssh_agent = match ssh_agent {
            Some(socket) => {
                let path = state(ctx)
                    .sockets
                    .stand_in(&socket.handle)
                    .await
                    .map_err(|e| classified(&e))?;
                // Whose agent: repositories fetched through one client's keys are not served
                // to another client from the cache.
                Some((path, socket.handle.clone()))
            }
            None => None,
        };
        let remote = state(ctx)
            .git
            .remote(url, ssh_known_hosts, credentials, ssh_agent)
            .map_err(|e| classified(&e))?;
        Ok(GitRepository(Arc::new(RepoState {
            remote,
            discard_git_dir: !keep_git_dir,
            refs: tokio::sync::OnceCell::new(),
        })))
    }

    async fn refs(&self, ctx: &Context<'_>) -> Result<Arc<RemoteRefs>> {
        let git = &state(ctx).git;
        self.0
            .refs
            .get_or_try_init(|| async { git.ls_remote(&self.0.remote).await.map(Arc::new) })
            .await
            .cloned()
            .map_err(|e| classified(&e))
    }

    /// Resolves `name` as `what`; a full commit id needs no listing.
    async fn lookup(&self, ctx: &Context<'_>, what: &'static str, name: &str) -> Result<GitRef> {
        crate::git::check_user_ref(name).map_err(|reason| {
            classified(&GitError::InvalidRef {
                what,
                name: name.to_string(),
                reason,
            })
        })?;
        let refs = if is_commit_sha(name) {
            Arc::new(RemoteRefs::default())
        } else {
            self.refs(ctx).await?
        };
        let url = self.0.remote.url().display().to_string();
        let r = refs.lookup(name).map_err(|e| match e {
            crate::git::LookupError::NotFound => classified(&GitError::RefNotFound {
                url,
                name: name.to_string(),
            }),
            crate::git::LookupError::Unsafe(detail) => {
                classified(&GitError::UnsafeRemote { url, detail })
            }
        })?;
        Ok(GitRef {
            repo: self.0.clone(),
            r,
        })
    }
}

/// A git repository.
#[Object]
impl GitRepository {
    /// Returns details for HEAD.
    async fn head(&self, ctx: &Context<'_>) -> Result<GitRef> {
        self.lookup(ctx, "ref", "HEAD").await
    }

    /// Returns details of a ref.
    #[graphql(name = "ref")]
    async fn ref_(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "Ref's name (can be a commit identifier, a tag name, a branch name, or a fully-qualified ref)."
        )]
        name: String,
    ) -> Result<GitRef> {
        self.lookup(ctx, "ref", &name).await
    }

    /// Returns details of a branch.
    async fn branch(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Branch's name (e.g., \"main\").")] name: String,
    ) -> Result<GitRef> {
        let full = format!(
            "refs/heads/{}",
            name.strip_prefix("refs/heads/").unwrap_or(&name)
        );
        check_short(&name, "branch")?;
        self.lookup(ctx, "branch", &full).await
    }

    /// Returns details of a tag.
    async fn tag(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Tag's name (e.g., \"v0.3.9\").")] name: String,
    ) -> Result<GitRef> {
        let full = format!(
            "refs/tags/{}",
            name.strip_prefix("refs/tags/").unwrap_or(&name)
        );
        check_short(&name, "tag")?;
        self.lookup(ctx, "tag", &full).await
    }

    /// Returns details of a commit.
    async fn commit(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "Identifier of the commit (e.g., \"b6315d8f2810962c601af73f86831f6866ea798b\")."
        )]
        id: String,
    ) -> Result<GitRef> {
        if !is_commit_sha(&id) {
            return Err(gql_error(
                ErrorKind::InvalidArgument,
                format!("invalid commit SHA: {id:?}"),
            ));
        }
        self.lookup(ctx, "commit", &id).await
    }

    /// tags that match any of the given glob patterns.
    async fn tags(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Glob patterns (e.g., \"refs/tags/v*\").")] patterns: Option<Vec<String>>,
    ) -> Result<Vec<String>> {
        Ok(self.refs(ctx).await?.tags(&patterns.unwrap_or_default()))
    }

    /// branches that match any of the given glob patterns.
    async fn branches(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Glob patterns (e.g., \"refs/tags/v*\").")] patterns: Option<Vec<String>>,
    ) -> Result<Vec<String>> {
        Ok(self
            .refs(ctx)
            .await?
            .branches(&patterns.unwrap_or_default()))
    }

    /// The URL of the git repository (credentials masked).
    async fn url(&self) -> Option<String> {
        Some(self.0.remote.url().display().to_string())
    }
}

/// `branch("-x")` becomes `refs/heads/-x`: refuse the short name as such (G3).
fn check_short(name: &str, what: &'static str) -> Result<()> {
    crate::git::check_user_ref(name).map_err(|reason| {
        classified(&GitError::InvalidRef {
            what,
            name: name.to_string(),
            reason,
        })
    })
}

/// A git ref (tag, branch, or commit).
#[derive(Clone)]
pub struct GitRef {
    repo: Arc<RepoState>,
    r: Ref,
}

/// A git ref (tag, branch, or commit).
#[Object]
impl GitRef {
    /// The resolved commit id at this ref.
    async fn commit(&self) -> String {
        self.r.sha.clone()
    }

    /// The resolved ref name at this ref.
    #[graphql(name = "ref")]
    async fn ref_(&self) -> String {
        self.r.name.clone().unwrap_or_else(|| self.r.sha.clone())
    }

    /// The filesystem tree at this ref.
    async fn tree(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = false, desc = "Set to true to discard .git directory.")]
        discard_git_dir: bool,
        #[graphql(default = 1, desc = "The depth of the tree to fetch.")] depth: i32,
    ) -> Result<Directory> {
        let keep = !(discard_git_dir || self.repo.discard_git_dir);
        let snapshot = state(ctx)
            .git
            .tree(&self.repo.remote, &self.r, keep, depth)
            .await
            .map_err(|e| classified(&*e))?;
        Ok(Directory::new(DirectoryNode::Snapshot { snapshot }))
    }
}
