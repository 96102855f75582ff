//! One rtnetlink request and its answers, over a fresh `NETLINK_ROUTE` socket in the calling
//! thread's network namespace. The messages are built and parsed by `netlink-packet-route`; this
//! only frames, sends, and reads until the kernel's acknowledgement.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Sends `message` with `flags` (beside `NLM_F_REQUEST | NLM_F_ACK`) and returns the messages
/// the kernel answered before its acknowledgement. A refusal is the kernel's errno.
pub fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let mut answers = Vec::new();
    let mut reply = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut reply[..], 0)?;
        let mut at = 0;
        while at < n {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(answers),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(answers),
                _ => {}
            }
            if length == 0 {
                break;
            }
            at += length.next_multiple_of(4);
        }
    }
}
