//! Turning a parsed query frame into its reply, in place.

use super::*;

/// Rewrites the headers of the frame `buf` (parsed as `p`) into a reply whose
/// UDP payload — already written at `p.payload()` — is `payload_len` bytes:
/// MACs, addresses and ports swapped, lengths set, TTL/hop limit reset, IPv4
/// header checksum and UDP checksum computed. Returns the frame length.
///
/// The caller guarantees `p` came from [`parse`] on this buffer and that the
/// payload fits in `buf`; a violation panics on a bounds check, it cannot
/// corrupt memory.
pub fn write_reply(buf: &mut [u8], p: &Parsed, payload_len: usize) -> usize {
    let udp_len = UDP_HLEN + payload_len;
    let end = p.l4 + udp_len;

    let (dst, src) = buf[..12].split_at_mut(6);
    dst.swap_with_slice(src);

    let udp_len16 = udp_len as u16;
    match p.family {
        Family::V4 => {
            let ip = &mut buf[p.l3..p.l4];
            let (front, addrs) = ip.split_at_mut(12);
            let (s, d) = addrs.split_at_mut(4);
            s.swap_with_slice(d);
            front[2..4].copy_from_slice(&((IPV4_HLEN + udp_len) as u16).to_be_bytes());
            front[4..8].copy_from_slice(&[0, 0, 0x40, 0]); // ID 0, DF (RFC 6864)
            front[8] = REPLY_TTL;
            front[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::ipv4_header(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        Family::V6 => {
            let ip = &mut buf[p.l3..p.l4];
            let (front, addrs) = ip.split_at_mut(8);
            let (s, d) = addrs.split_at_mut(16);
            s.swap_with_slice(d);
            front[4..6].copy_from_slice(&udp_len16.to_be_bytes());
            front[7] = REPLY_TTL;
        }
    }

    let (ip, rest) = buf[p.l3..end].split_at_mut(p.l4 - p.l3);
    let udp = rest;
    let (sport, dport) = udp[..4].split_at_mut(2);
    sport.swap_with_slice(dport);
    udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let c = match p.family {
        Family::V4 => {
            let s: [u8; 4] = ip[12..16].try_into().expect("4-byte slice");
            let d: [u8; 4] = ip[16..20].try_into().expect("4-byte slice");
            checksum::udp_v4(&s, &d, udp)
        }
        Family::V6 => {
            let s: [u8; 16] = ip[8..24].try_into().expect("16-byte slice");
            let d: [u8; 16] = ip[24..40].try_into().expect("16-byte slice");
            checksum::udp_v6(&s, &d, udp)
        }
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    end
}
