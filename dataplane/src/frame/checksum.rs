//! Internet checksum (RFC 1071) over bytes, and the UDP pseudo-headers.

/// Adds `data` to a running ones'-complement sum, as big-endian 16-bit words
/// (an odd trailing byte is padded with zero). The result is not folded.
#[inline]
pub fn add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        sum += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        sum += u64::from(rest[i]) << 8;
    }
    sum
}

/// Folds a running sum to 16 bits and complements it.
#[inline]
pub fn finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checksum of an IPv4 header whose checksum field is zero.
#[inline]
pub fn ipv4_header(header: &[u8]) -> u16 {
    finish(add(0, header))
}

/// UDP checksum over IPv4: pseudo-header (addresses, protocol, length) plus
/// the UDP header and payload in `udp`, whose checksum field must be zero.
/// Returns 0xffff for a computed 0, as RFC 768 requires.
#[inline]
pub fn udp_v4(src: &[u8; 4], dst: &[u8; 4], udp: &[u8]) -> u16 {
    let mut sum = add(0, src);
    sum = add(sum, dst);
    sum += 17 + udp.len() as u64;
    nonzero(finish(add(sum, udp)))
}

/// UDP checksum over IPv6 (RFC 8200 §8.1); never 0.
#[inline]
pub fn udp_v6(src: &[u8; 16], dst: &[u8; 16], udp: &[u8]) -> u16 {
    let mut sum = add(0, src);
    sum = add(sum, dst);
    sum += 17 + udp.len() as u64;
    nonzero(finish(add(sum, udp)))
}

#[inline]
fn nonzero(c: u16) -> u16 {
    if c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::frame::testing::reference_checksum as reference;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(add(0, &data)), 0x220d);
    }

    #[test]
    fn matches_reference_for_all_lengths_and_patterns() {
        let mut seed = 0x1234_5678u32;
        for len in 0..300 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            assert_eq!(finish(add(0, &data)), reference(&data), "len {len}");
            let ones = vec![0xffu8; len];
            assert_eq!(finish(add(0, &ones)), reference(&ones), "ones len {len}");
        }
    }

    #[test]
    fn known_ipv4_header() {
        // A header captured from the wire (checksum field 0xb861 zeroed).
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(finish(add(0, &h)), 0);
    }

    #[test]
    fn udp_checksums_verify_to_zero_with_reference() {
        let src = [192, 0, 2, 2];
        let dst = [192, 0, 2, 1];
        let mut udp = vec![
            0x30, 0x39, 0x00, 0x35, 0x00, 0x0d, 0x00, 0x00, 1, 2, 3, 4, 5,
        ];
        let c = udp_v4(&src, &dst, &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&udp);
        assert_eq!(reference(&pseudo), 0);

        let s6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let d6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        udp[6..8].copy_from_slice(&[0, 0]);
        let c = udp_v6(&s6, &d6, &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s6);
        pseudo.extend_from_slice(&d6);
        pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        pseudo.extend_from_slice(&udp);
        assert_eq!(reference(&pseudo), 0);
    }
}
