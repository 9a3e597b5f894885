//! Address allocation for one pool, in memory (attachments do not outlive the engine: setup
//! deletes whatever a crashed run left, so there is nothing to persist).

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// A bitmap over the pool's allocatable addresses: every host address except the gateway
/// (the network's first host) and the broadcast address.
#[derive(Debug)]
pub(crate) struct Ipam {
    /// The first allocatable address, as a number.
    base: u32,
    capacity: u32,
    used: Vec<u64>,
    in_use: u32,
    /// Next-fit cursor: a released address is handed out again only after the rest of the pool,
    /// so peers' ARP entries for it have long expired by then.
    next: u32,
}

impl Ipam {
    /// `net` must have at least two host addresses (prefix length at most 30).
    pub(crate) fn new(net: Ipv4Net) -> Self {
        let network = u32::from(net.network());
        let broadcast = u32::from(net.broadcast());
        let base = network + 2;
        let capacity = broadcast.saturating_sub(base);
        Ipam {
            base,
            capacity,
            used: vec![0; capacity.div_ceil(64) as usize],
            in_use: 0,
            next: 0,
        }
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    pub(crate) fn in_use(&self) -> u32 {
        self.in_use
    }

    /// A free address, or `None` when the pool is exhausted.
    pub(crate) fn allocate(&mut self) -> Option<Ipv4Addr> {
        if self.in_use >= self.capacity {
            return None;
        }
        let mut i = self.next;
        for _ in 0..self.capacity {
            let (word, bit) = ((i / 64) as usize, i % 64);
            if self.used[word] & (1 << bit) == 0 {
                self.used[word] |= 1 << bit;
                self.in_use += 1;
                self.next = (i + 1) % self.capacity;
                return Some(Ipv4Addr::from(self.base + i));
            }
            i = (i + 1) % self.capacity;
        }
        None
    }

    /// Frees `ip`. Returns false (and changes nothing) if it was not allocated here.
    pub(crate) fn release(&mut self, ip: Ipv4Addr) -> bool {
        let Some(i) = u32::from(ip)
            .checked_sub(self.base)
            .filter(|i| *i < self.capacity)
        else {
            return false;
        };
        let (word, bit) = ((i / 64) as usize, i % 64);
        if self.used[word] & (1 << bit) == 0 {
            return false;
        }
        self.used[word] &= !(1 << bit);
        self.in_use -= 1;
        true
    }
}
