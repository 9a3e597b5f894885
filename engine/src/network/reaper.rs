//! Deleting released veths and namespaces in the background, in batches.
//!
//! Unregistering network devices holds the RTNL lock for 20-40 ms per batch on this project's
//! kernels (RCU grace periods), and every other netlink change, such as the next attach's veth,
//! waits behind it. Paid per release, that made attach+release ~30 ms, and namespace teardown
//! (the kernel deletes a dead namespace's devices, batching only what died meanwhile) does the
//! same. So a release only retires its veth (down, into the network's link group: the exec is
//! cut off at once), unpins its namespace but keeps an fd to it, and queues both here. This
//! task waits for a batch to build up, deletes the whole group with one request and then drops
//! the fds, so each batch costs two stalls whatever its size. An address goes back to the pool
//! only after its veth is gone, so it is never live twice on the bridge.

use super::ipam::Ipam;
use super::netlink;
use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long a batch builds up after the first release. Addresses come back this much later.
const BATCH_DELAY: Duration = Duration::from_millis(100);

/// A released attachment on its way out.
pub(crate) struct Retired {
    pub(crate) veth: String,
    pub(crate) ip: Ipv4Addr,
    /// Keeps the namespace alive until its batch goes, so the kernel tears namespaces down in
    /// batches too. `None` if it was already gone.
    pub(crate) netns: Option<File>,
}

pub(crate) struct Reaper {
    /// The link group retired veths are moved to; only this network's veths are ever in it.
    pub(crate) group: u32,
    pending: Mutex<Vec<Retired>>,
    wake: Notify,
    /// Queued and not yet deleted; `settle` waits for 0.
    outstanding: watch::Sender<usize>,
    ipam: Arc<Mutex<Ipam>>,
}

impl Reaper {
    pub(crate) fn new(group: u32, ipam: Arc<Mutex<Ipam>>) -> Self {
        Reaper {
            group,
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
            outstanding: watch::Sender::new(0),
            ipam,
        }
    }

    /// Queues a retired veth; its address is freed once the veth is deleted. Callable from
    /// synchronous code (Drop).
    pub(crate) fn enqueue(&self, retired: Retired) {
        self.outstanding.send_modify(|n| *n += 1);
        lock(&self.pending).push(retired);
        self.wake.notify_one();
    }

    /// Waits until everything queued so far is deleted and its address free.
    pub(crate) async fn settle(&self) {
        let mut rx = self.outstanding.subscribe();
        // Err only if the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    pub(crate) async fn run(self: Arc<Self>, handle: rtnetlink::Handle) {
        loop {
            // A notification sent while a batch is in flight leaves a permit, so nothing
            // queued meanwhile waits for the next release.
            self.wake.notified().await;
            tokio::time::sleep(BATCH_DELAY).await;
            loop {
                let batch = std::mem::take(&mut *lock(&self.pending));
                if batch.is_empty() {
                    break;
                }
                // Everything in the batch was retired (moved into the group) before it was
                // queued, so this one request deletes all of it (and maybe some retired since).
                let deleted: Vec<Ipv4Addr> = match netlink::delete_group(&handle, self.group).await
                {
                    Ok(()) => batch.iter().map(|r| r.ip).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "batch veth deletion failed; deleting one by one");
                        let mut deleted = Vec::new();
                        for Retired { veth, ip, .. } in &batch {
                            match netlink::delete_link(&handle, veth).await {
                                Ok(_) => deleted.push(*ip),
                                // The address stays out of the pool: it may still be live.
                                Err(e) => {
                                    tracing::warn!(%veth, error = %e, "cannot delete a released veth")
                                }
                            }
                        }
                        deleted
                    }
                };
                {
                    let mut ipam = lock(&self.ipam);
                    for ip in deleted {
                        ipam.release(ip);
                    }
                }
                let count = batch.len();
                // Closing the namespace fds lets the kernel tear them all down in one go.
                batch.into_iter().for_each(|r| drop(r.netns));
                self.outstanding.send_modify(|n| *n -= count);
            }
        }
    }
}

/// A poisoned lock only means a panic elsewhere mid-update of plain data; carry on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
