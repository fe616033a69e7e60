//! Validation of a received frame, down to the UDP payload.

use xdpdns_common::stats::DropReason;

use super::*;

/// IP version of a parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Offsets of a valid IPv4/IPv6 UDP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub family: Family,
    /// Start of the IP header (after Ethernet and an optional VLAN tag).
    pub l3: usize,
    /// Start of the UDP header.
    pub l4: usize,
    /// The UDP payload: `[l4 + 8, l4 + 8 + payload_len)`.
    pub payload_len: usize,
}

impl Parsed {
    pub fn payload(&self) -> usize {
        self.l4 + UDP_HLEN
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Checks a frame as received (`frame` is exactly the received bytes) and
/// locates its UDP payload. Anything the dataplane must not answer is an error
/// naming the reason; nothing here panics on any input. UDP checksums are
/// [`udp_checksum_ok`]'s business (headers and lengths are always checked).
pub fn parse(frame: &[u8]) -> Result<Parsed, DropReason> {
    if frame.len() < ETH_HLEN {
        return Err(DropReason::FrameTruncated);
    }
    let mut l3 = ETH_HLEN;
    let mut proto = be16(frame, 12);
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        if frame.len() < ETH_HLEN + VLAN_HLEN {
            return Err(DropReason::FrameTruncated);
        }
        proto = be16(frame, 16);
        l3 += VLAN_HLEN;
    }
    // Our replies swap the MACs: never answer a multicast or broadcast source.
    if frame[6] & 1 != 0 {
        return Err(DropReason::BadSource);
    }
    match proto {
        ETH_P_IP => parse_v4(frame, l3),
        ETH_P_IPV6 => parse_v6(frame, l3),
        _ => Err(DropReason::NotUdp),
    }
}

fn parse_v4(frame: &[u8], l3: usize) -> Result<Parsed, DropReason> {
    let ip = frame
        .get(l3..l3 + IPV4_HLEN)
        .ok_or(DropReason::FrameTruncated)?;
    if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return Err(DropReason::BadIpHeader);
    }
    if ip[0] & 0x0f != 5 {
        return Err(DropReason::IpOptions);
    }
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(DropReason::Fragment);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(DropReason::NotUdp);
    }
    let total = usize::from(be16(ip, 2));
    if total < IPV4_HLEN + UDP_HLEN || l3 + total > frame.len() {
        return Err(DropReason::BadIpHeader);
    }
    if checksum::finish(checksum::add(0, ip)) != 0 {
        return Err(DropReason::BadIpHeader);
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    // 0.0.0.0/8, 127/8 (martian off-host), multicast, class E and broadcast.
    if src[0] == 0 || src[0] == 127 || src[0] >= 224 {
        return Err(DropReason::BadSource);
    }
    let l4 = l3 + IPV4_HLEN;
    let udp = &frame[l4..l3 + total];
    let payload_len = check_udp(udp)?;
    Ok(Parsed {
        family: Family::V4,
        l3,
        l4,
        payload_len,
    })
}

fn parse_v6(frame: &[u8], l3: usize) -> Result<Parsed, DropReason> {
    let ip = frame
        .get(l3..l3 + IPV6_HLEN)
        .ok_or(DropReason::FrameTruncated)?;
    if ip[0] >> 4 != 6 {
        return Err(DropReason::BadIpHeader);
    }
    match ip[6] {
        IPPROTO_UDP => {}
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => return Err(DropReason::IpOptions),
        _ => return Err(DropReason::NotUdp),
    }
    let plen = usize::from(be16(ip, 4));
    if plen < UDP_HLEN || l3 + IPV6_HLEN + plen > frame.len() {
        return Err(DropReason::BadIpHeader);
    }
    // Unspecified (::) or multicast (ff00::/8) sources are never answered.
    let src: &[u8; 16] = ip[8..24]
        .try_into()
        .map_err(|_| DropReason::FrameTruncated)?;
    if src[0] == 0xff || src.iter().all(|&b| b == 0) {
        return Err(DropReason::BadSource);
    }
    let l4 = l3 + IPV6_HLEN;
    let udp = &frame[l4..l4 + plen];
    let payload_len = check_udp(udp)?;
    // RFC 8200: a zero UDP checksum is invalid over IPv6.
    if be16(udp, 6) == 0 {
        return Err(DropReason::BadChecksum);
    }
    Ok(Parsed {
        family: Family::V6,
        l3,
        l4,
        payload_len,
    })
}

/// Whether the UDP checksum of `frame` (parsed as `p`) is right: it sums to
/// zero, or it is 0 over IPv4 (none), or — with `partial` — it holds just
/// the pseudo-header's sum, which is what a local veth peer with TX checksum
/// offload sends (the kernel would accept it; a frame from a wire never
/// looks like that unless it is corrupt in one precise way).
pub fn udp_checksum_ok(frame: &[u8], p: &Parsed, partial: bool) -> bool {
    let Some(udp) = frame.get(p.l4..p.payload() + p.payload_len) else {
        return false;
    };
    let field = be16(udp, 6);
    let mut pseudo = match p.family {
        Family::V4 => {
            if field == 0 {
                return true;
            }
            checksum::add(0, &frame[p.l3 + 12..p.l3 + 20])
        }
        Family::V6 => checksum::add(0, &frame[p.l3 + 8..p.l3 + 40]),
    };
    pseudo += 17 + udp.len() as u64;
    if checksum::finish(checksum::add(pseudo, udp)) == 0 {
        return true;
    }
    // finish() is the complement of the folded sum.
    partial && !checksum::finish(pseudo) == field
}

/// Checks the UDP header against the IP payload `udp`; returns the payload length.
fn check_udp(udp: &[u8]) -> Result<usize, DropReason> {
    if udp.len() < UDP_HLEN {
        return Err(DropReason::BadUdpLength);
    }
    let len = usize::from(be16(udp, 4));
    if len != udp.len() {
        return Err(DropReason::BadUdpLength);
    }
    if be16(udp, 0) == 0 {
        return Err(DropReason::BadSource);
    }
    Ok(len - UDP_HLEN)
}
