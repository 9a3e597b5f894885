//! The rtnetlink requests the network needs: bridge, veth pairs, addresses, routes.

use super::NetworkError;
use futures_util::TryStreamExt;
use nix::libc::{EADDRNOTAVAIL, EEXIST, ENODEV};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr, TokioSocket};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Every network namespace numbers its loopback device 1.
const LOOPBACK_INDEX: u32 = 1;
/// The exec's end of its veth pair.
pub(crate) const CONTAINER_IFNAME: &str = "eth0";

/// Maps an rtnetlink error to an `io::Error` carrying the kernel's errno when there is one.
fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let op = op.into();
    move |e| NetworkError::Netlink {
        op,
        source: to_io(e),
    }
}

fn errno_is(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno)
}

/// A link looked up by name, or `None` if there is none.
pub(crate) async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, NetworkError> {
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno_is(&e, ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("look up link {name}"))(e)),
    }
}

pub(crate) fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

pub(crate) fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The MTU of the interface that holds the IPv4 default route, as the CNI bridge plugin
/// copies it: a bridge at 1500 behind a smaller uplink black-holes large packets.
pub(crate) async fn uplink_mtu(handle: &Handle) -> Result<Option<u32>, NetworkError> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut oif = None;
    while let Some(route) = routes.try_next().await.map_err(nl_err("list routes"))? {
        let main = route.header.table == RouteHeader::RT_TABLE_MAIN
            || route
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RouteHeader::RT_TABLE_MAIN)));
        if route.header.destination_prefix_length == 0 && main {
            oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if oif.is_some() {
                break;
            }
        }
    }
    drop(routes);
    let Some(oif) = oif else {
        return Ok(None);
    };
    let link = handle
        .link()
        .get()
        .match_index(oif)
        .execute()
        .try_next()
        .await
        .map_err(nl_err("look up the uplink"))?;
    Ok(link.as_ref().and_then(link_mtu))
}

/// Creates the bridge, or adopts an existing one; brings it up with a fixed MAC address and
/// `mtu`. Returns its index.
pub(crate) async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    mac: [u8; 6],
    mtu: u32,
) -> Result<u32, NetworkError> {
    // A bridge takes the lowest MAC of its ports unless one was set explicitly, so without this
    // its MAC (and every exec's ARP entry for the gateway) would change as execs come and go.
    let existing = match link_by_name(handle, name).await? {
        Some(link) => Some(link),
        None => {
            let created = handle
                .link()
                .add(LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build())
                .execute()
                .await;
            match created {
                Ok(()) => None,
                // Lost a race with another setup: adopt theirs.
                Err(e) if errno_is(&e, EEXIST) => link_by_name(handle, name).await?,
                Err(e) => return Err(nl_err(format!("create bridge {name}"))(e)),
            }
        }
    };
    let link = match existing {
        Some(link) => {
            if link_kind(&link) != Some(&InfoKind::Bridge) {
                return Err(NetworkError::NotABridge {
                    name: name.to_string(),
                });
            }
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(link.header.index)
                        .mtu(mtu)
                        .address(mac.to_vec())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("configure bridge {name}")))?;
            link
        }
        None => link_by_name(handle, name)
            .await?
            .ok_or_else(|| NetworkError::Netlink {
                op: format!("create bridge {name}"),
                source: io::Error::other("the new bridge is not there"),
            })?,
    };
    Ok(link.header.index)
}

/// Puts exactly `gateway/prefix` on the bridge: IPv4 addresses from an earlier run with
/// another pool are removed.
pub(crate) async fn ensure_bridge_address(
    handle: &Handle,
    index: u32,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetworkError> {
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("list bridge addresses"))?;
    let mut present = false;
    for addr in addrs {
        if addr.header.family != AddressFamily::Inet || addr.header.index != index {
            continue;
        }
        let ip = addr.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        if ip == Some(gateway) && addr.header.prefix_len == prefix {
            present = true;
            continue;
        }
        tracing::info!(address = ?ip, "removing a stale address from the bridge");
        match handle.address().del(addr).execute().await {
            Err(e) if !errno_is(&e, EADDRNOTAVAIL) => {
                return Err(nl_err("remove a stale bridge address")(e))
            }
            _ => {}
        }
    }
    if !present {
        match handle
            .address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Err(e) if !errno_is(&e, EEXIST) => {
                return Err(nl_err(format!("add {gateway}/{prefix} to the bridge"))(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Veth links left by an earlier run: ports of the bridge, and unattached ones with our prefix
/// (creating and enslaving are one request, but a bridge deleted by hand frees its ports).
/// Attached veths with our prefix belong to another bridge whose prefix collides: not ours.
pub(crate) async fn stale_veths(
    handle: &Handle,
    bridge_index: u32,
    prefix: &str,
) -> Result<Vec<String>, NetworkError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("list links"))?;
    Ok(links
        .iter()
        .filter(|l| link_kind(l) == Some(&InfoKind::Veth))
        .filter_map(|l| {
            let name = link_name(l)?;
            let ours = match link_controller(l) {
                Some(controller) => controller == bridge_index,
                None => name.starts_with(prefix),
            };
            ours.then(|| name.to_string())
        })
        .collect())
}

/// One request creates the pair: `host_name` on the bridge, up; its peer `eth0` already in
/// the namespace `netns` (nothing is moved afterwards), but down: asking for it up here fails
/// with ENOTCONN (kernel 6.18, `ip link add ... peer ... netns X up` too), so
/// [`configure_inside`] brings it up.
pub(crate) async fn create_veth(
    handle: &Handle,
    host_name: &str,
    bridge_index: u32,
    mtu: u32,
    netns: BorrowedFd<'_>,
) -> Result<(), NetworkError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(CONTAINER_IFNAME)
        .setns_by_fd(netns.as_raw_fd())
        .mtu(mtu)
        .build();
    let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_name)
        .mtu(mtu)
        .controller(bridge_index)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle
        .link()
        .add(message)
        .execute()
        .await
        .map_err(nl_err(format!("create veth {host_name}")))
}

/// Deletes a link by name (either end of a veth pair takes the other with it). Returns false if
/// there was none.
pub(crate) async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetworkError> {
    match handle
        .link()
        .del_with_message(by_name(name))
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if errno_is(&e, ENODEV) => Ok(false),
        Err(e) => Err(nl_err(format!("delete link {name}"))(e)),
    }
}

/// Takes a veth out of service: down (the exec loses its carrier at once) and into `group`,
/// where [`delete_group`] finds it. Returns false if there is no such link.
pub(crate) async fn retire_link(
    handle: &Handle,
    name: &str,
    group: u32,
) -> Result<bool, NetworkError> {
    match handle
        .link()
        .set(retire_message(name, group))
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if errno_is(&e, ENODEV) => Ok(false),
        Err(e) => Err(nl_err(format!("retire link {name}"))(e)),
    }
}

/// [`retire_link`] for `Drop`, which cannot await: one blocking request on a fresh socket.
pub(crate) fn retire_link_blocking(name: &str, group: u32) -> io::Result<bool> {
    match request_blocking(RouteNetlinkMessage::SetLink(retire_message(name, group))) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

fn retire_message(name: &str, group: u32) -> LinkMessage {
    LinkUnspec::new_with_name(name)
        .down()
        .link_group(group)
        .build()
}

/// Deletes every link in `group` in one request. The kernel then unregisters them as one batch,
/// paying its RCU grace periods (20-40 ms on a 250 Hz kernel) once rather than per link.
pub(crate) async fn delete_group(handle: &Handle, group: u32) -> Result<(), NetworkError> {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::Group(group));
    match handle.link().del_with_message(message).execute().await {
        Err(e) if !errno_is(&e, ENODEV) => Err(nl_err(format!("delete link group {group:#x}"))(e)),
        _ => Ok(()),
    }
}

fn by_name(name: &str) -> LinkMessage {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_string()));
    message
}

/// Sends one request and waits for its acknowledgement, blocking.
fn request_blocking(payload: RouteNetlinkMessage) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = NetlinkMessage::from(payload);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    loop {
        let (reply, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < reply.len() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if let NetlinkPayload::Error(err) = message.payload {
                return match err.raw_code() {
                    0 => Ok(()),
                    _ => Err(err.to_io()),
                };
            }
            match message.header.length as usize {
                0 => break,
                len => offset += len,
            }
        }
    }
}

/// Configures the exec's side over a socket opened inside its namespace: loopback and eth0 up,
/// the address on eth0, the default route through the gateway. The socket is closed on return, so
/// it does not keep the namespace alive.
pub(crate) async fn configure_inside(
    socket: TokioSocket,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), NetworkError> {
    let (connection, handle, _) = rtnetlink::from_socket(socket);
    let work = async {
        handle
            .link()
            .set(LinkUnspec::new_with_index(LOOPBACK_INDEX).up().build())
            .execute()
            .await
            .map_err(nl_err("bring lo up"))?;
        let eth0 = link_by_name(&handle, CONTAINER_IFNAME)
            .await?
            .ok_or_else(|| NetworkError::Netlink {
                op: "configure the exec's interface".into(),
                source: io::Error::other("eth0 is missing from the new namespace"),
            })?
            .header
            .index;
        handle
            .link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(nl_err("bring eth0 up"))?;
        handle
            .address()
            .add(eth0, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(nl_err(format!("add {ip}/{prefix} to eth0")))?;
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .output_interface(eth0)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("add the default route via {gateway}")))
    };
    // Driving the connection here rather than spawning it means it is dropped, and the socket
    // closed, the moment the work is done.
    tokio::select! {
        biased;
        result = work => result,
        () = connection => Err(NetworkError::Netlink {
            op: "configure the exec's interface".into(),
            source: io::Error::other("the netlink connection closed"),
        }),
    }
}
